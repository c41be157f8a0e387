"""The count that proves a shard or row-group input was read whole: every planned unit, once.

Loose files are counted before reading (the listing is the plan); a shard's
samples are only known by reading it. Each read task reports every unit it
finished (samples seen, rows emitted) to one small actor, keyed by unit, so a
retried task reports the same numbers again rather than twice. The driver
checks, before it commits, that every unit reported and that it received
exactly the rows the units emitted, and reads the tally for its progress.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray


@dataclass(frozen=True)
class Tally:
    units_done: int = 0
    samples: int = 0  # seen in the input, already-labelled ones included
    emitted: int = 0  # sent on to be labelled

    @property
    def skipped(self) -> int:
        return self.samples - self.emitted


class UnitLedger:
    """Per unit: (samples, emitted). Runs as a Ray actor with no CPU of its own."""

    def __init__(self) -> None:
        self._units: dict[int, tuple[int, int]] = {}

    def record(self, unit: int, samples: int, emitted: int) -> None:
        self._units[unit] = (samples, emitted)

    def tally(self) -> Tally:
        return Tally(
            units_done=len(self._units),
            samples=sum(s for s, _ in self._units.values()),
            emitted=sum(e for _, e in self._units.values()),
        )


def start_ledger() -> ray.actor.ActorHandle:
    """A fresh ledger for one run (the caller kills it when the run ends)."""
    return ray.remote(num_cpus=0, max_restarts=0)(UnitLedger).remote()


def record_unit(ledger: ray.actor.ActorHandle, unit: int, samples: int, emitted: int) -> None:
    """Report a finished unit; waits for the ledger to hold it, so the task never ends with it unreported."""
    ray.get(ledger.record.remote(unit, samples, emitted))
