"""How a run's progress looks: one live bar on a terminal, a plain line every N seconds elsewhere."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from pipeline import Progress

BAR_REFRESH_S = 0.25  # a terminal bar redraws at most this often
DEFAULT_LINE_EVERY_S = 30.0  # logs (cron, Airflow, `ray job submit`) get a line this often


def duration(seconds: float | None) -> str:
    """`1h02m`, `3m05s`, `42s`; `?` when unknown."""
    if seconds is None:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def figures(progress: Progress) -> str:
    skipped = f", {progress.skipped} already done" if progress.skipped else ""
    done = f"{progress.done}/{progress.total}" if progress.total is not None else f"{progress.done}"
    units = f", {progress.units_done}/{progress.units_total} {progress.unit_name} read" if progress.unit_name else ""
    return (
        f"{done} images ({progress.ok} ok, {progress.error} error{skipped}){units} "
        f"{progress.images_per_second:.2f} images/s, ETA {duration(progress.eta_s)}"
    )


class ProgressDisplay:
    """A callable for `RunDisplay.on_progress`: a bar when `stream` is a terminal, else periodic lines."""

    def __init__(self, stream: TextIO = sys.stderr, line_every_s: float = DEFAULT_LINE_EVERY_S):
        self.stream = stream
        self.live = stream.isatty()
        self.every = BAR_REFRESH_S if self.live else line_every_s
        self._last = float("-inf")
        self._drawn = False
        self._unshown: Progress | None = None  # the latest figures, when the throttle held them back

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        finished = progress.finished
        if now - self._last < self.every and not finished:
            self._unshown = progress
            return
        self._last = now
        self._show(progress)

    def _show(self, progress: Progress) -> None:
        self._unshown = None
        if self.live:
            self._bar(progress)
        elif progress.done or progress.finished:
            print(f"progress: {figures(progress)}", file=self.stream, flush=True)

    def _bar(self, progress: Progress) -> None:
        text = figures(progress)
        width = shutil.get_terminal_size((100, 20)).columns
        room = max(10, min(40, width - len(text) - 10))
        share = progress.share
        filled = int(room * share)
        line = f"[{'#' * filled}{'.' * (room - filled)}] {share:4.0%} {text}"
        self.stream.write("\r" + line[: width - 1].ljust(width - 1))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Show the last figures if the throttle held them back (a shard run's final count of shards read
        comes right after its last rows), then end the bar's line so what is printed next starts on its own."""
        if self._unshown is not None:
            self._show(self._unshown)
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
