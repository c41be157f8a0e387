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
    """The run so far: `done` of `total` images this run labels (`skipped` were already in the output)."""

    done: int
    ok: int
    error: int
    total: int
    skipped: int
    elapsed_s: float

    @property
    def images_per_second(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None before the first image."""
        rate = self.images_per_second
        return (self.total - self.done) / rate if rate > 0 else None


@dataclass(frozen=True)
class RunDisplay:
    """How a run is shown: a progress callback, Ray Data's own per-operator bars, and Ray's logs."""

    on_progress: Callable[[Progress], None] | None = None
    ray_progress: bool = False  # Ray Data's per-operator bars: for debugging the pipeline itself
    verbose: bool = False  # Ray's and the workers' logs in the driver's output


@dataclass
class ProgressCounter:
    """Counts rows as the driver receives them and tells `display.on_progress`."""

    total: int
    skipped: int
    display: RunDisplay
    started: float = field(default_factory=time.monotonic)
    ok: int = 0
    error: int = 0

    def add(self, ok: int, error: int) -> None:
        self.ok += ok
        self.error += error
        self.report()

    def report(self) -> None:
        if self.display.on_progress is not None:
            self.display.on_progress(self.snapshot())

    def snapshot(self) -> Progress:
        done = self.ok + self.error
        return Progress(done, self.ok, self.error, self.total, self.skipped, time.monotonic() - self.started)
