"""What a running `label` reports as rows land: counts, rate and ETA, for whoever shows them.

The pipeline only counts; showing is the caller's (the CLI draws a bar on a
terminal and prints a line every N seconds elsewhere). `RunDisplay` is how a
caller asks for it, with the debugging switches for Ray's own output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Progress:
    """The run so far: `done` of `total` images this run labels (`skipped` were already in the output).

    Shard and table inputs learn their images while reading: there `total` is None, and `units_done` of
    `units_total` (`unit_name`: "shards", "row groups") says how far the reading is.
    """

    done: int
    ok: int
    error: int
    total: int | None
    skipped: int
    elapsed_s: float
    units_done: int = 0
    units_total: int = 0
    unit_name: str = ""

    @property
    def images_per_second(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def share(self) -> float:
        """How much of the run is done, 0..1: of the images, or else of the units read."""
        if self.total is not None:
            return self.done / self.total if self.total else 1.0
        return self.units_done / self.units_total if self.units_total else 1.0

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None before the first image (or unit)."""
        share = self.share
        if not self.done or share <= 0:
            return None
        return self.elapsed_s * (1 - share) / share


@dataclass(frozen=True)
class RunDisplay:
    """How a run is shown: a progress callback, Ray Data's own per-operator bars, and Ray's logs."""

    on_progress: Callable[[Progress], None] | None = None
    ray_progress: bool = False  # Ray Data's per-operator bars: for debugging the pipeline itself
    verbose: bool = False  # Ray's and the workers' logs in the driver's output


@dataclass
class ProgressCounter:
    """Counts rows as the driver receives them and tells `display.on_progress`."""

    total: int | None
    skipped: int
    display: RunDisplay
    started: float = field(default_factory=time.monotonic)
    ok: int = 0
    error: int = 0
    units_done: int = 0
    units_total: int = 0
    unit_name: str = ""

    def add(self, ok: int, error: int) -> None:
        self.ok += ok
        self.error += error
        self.report()

    def read_units(self, done: int, skipped: int) -> None:
        """Units read so far, and the images in them that were already labelled."""
        self.units_done, self.skipped = done, skipped

    def report(self) -> None:
        if self.display.on_progress is not None:
            self.display.on_progress(self.snapshot())

    def snapshot(self) -> Progress:
        done = self.ok + self.error
        elapsed = time.monotonic() - self.started
        return Progress(
            done,
            self.ok,
            self.error,
            self.total,
            self.skipped,
            elapsed,
            self.units_done,
            self.units_total,
            self.unit_name,
        )
