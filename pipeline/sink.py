"""The driver's side of writing: it sees one small record per file the workers wrote, and commits them.

The encode stage's rows never reach the driver. Workers stage each block of
labelled rows (`output.parts.stage_part`, where no reader looks) and the
driver receives a record per staged part; it groups them into data files of
at most `rows_per_file` rows and has a Ray task merge each group into its
data file (`output.parts.merge_parts`). A group is merged when it is full,
when its first part waited `commit_every_s`, and on demand (`flush`: the end
of the run, Ctrl-C, SIGTERM), so an interrupted run keeps every part whose
record reached the driver.
- incremental: data files go straight into the current data folder, so
  writing one is its commit; the lease is checked once before each round of
  merges (not per file);
- overwrite: they go into the run's own new data folder, which no pointer
  names until `commit_overwrite` flips it (docs/design.md, "Output layout").
Storage calls ride out outages (`retry.Retry`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pyarrow as pa
import ray

from .lease import LeaseClaim
from .output import (
    PartRecord,
    PartWriting,
    data_file_name,
    merge_parts,
)
from .storage import Location


@dataclass(frozen=True)
class WrittenFile:
    """One committed data file (summed into the run's counts)."""

    name: str  # relative to the output root: "<data folder>/<file>"
    rows: int
    ok: int
    bytes: int


@dataclass(frozen=True)
class WriterSettings:
    rows_per_file: int
    commit_every_s: float
    commit_each_file: bool  # incremental: into the current folder at once; overwrite: into the run's folder


class PartCommitter:
    """Turns staged-part records into committed data files, merged by Ray tasks (see the module's docstring).

    `add` and `flush` may be called from different threads (a timer merges a group that waited
    `commit_every_s`); one lock keeps the bookkeeping whole.
    """

    def __init__(
        self,
        writing: PartWriting,
        folder: str,
        settings: WriterSettings,
        *,
        claim: LeaseClaim,
        merge_cpus: float,
    ):
        self.writing = writing
        self.folder = folder
        self.settings = settings
        self.claim = claim
        self.written: list[WrittenFile] = []
        self._pending: list[PartRecord] = []  # staged parts no merge has taken yet
        self._first_at: float | None = None  # when the oldest pending part arrived
        self._merging: dict[ray.ObjectRef, int] = {}  # merge task -> the rows it was given
        self._launched = 0  # merges started: the sequence number of the next data file
        self._lock = threading.Lock()
        self._merge = ray.remote(merge_parts).options(num_cpus=merge_cpus)

    @property
    def output(self) -> Location:
        return self.writing.output

    @property
    def commit_each_file(self) -> bool:
        return self.settings.commit_each_file

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.written)

    def add(self, records: pa.Table) -> tuple[int, int]:
        """Take records of staged parts; merge each full group. Returns (ok, error) rows they hold."""
        parts = PartRecord.rows_of(records)
        with self._lock:
            if parts:
                self._pending += parts
                self._first_at = self._first_at or time.monotonic()
            self._launch(whole_groups_only=True)
            self._collect(wait=False)
        ok = sum(p.ok for p in parts)
        return ok, sum(p.rows for p in parts) - ok

    def flush_if_due(self) -> None:
        """Merge what is pending if its first part waited `commit_every_s` (called by a timer)."""
        with self._lock:
            started = self._first_at
            if started is not None and time.monotonic() - started >= self.settings.commit_every_s:
                self._launch(whole_groups_only=False)
            self._collect(wait=False)

    def flush(self) -> None:
        """Merge everything pending and wait for every merge (the end of the run, or an interruption)."""
        with self._lock:
            self._launch(whole_groups_only=False)
            self._collect(wait=True)

    def abandon(self) -> None:
        """Stop the merges still running (the run failed): none of them may write after its failure is
        recorded. A merge stopped midway leaves no data file; its parts go with the staging folder."""
        for task in list(self._merging):
            ray.cancel(task)
        self._merging.clear()

    def _launch(self, *, whole_groups_only: bool) -> None:
        groups = self._take_groups(whole_groups_only)
        if not groups:
            return
        if self.commit_each_file:  # the merged files are commits: once per round, the run must still hold the output
            self.claim.verify(self.writing.retry)
        for group in groups:
            name = data_file_name(self.writing.run_id, self._launched)
            task = self._merge.remote(self.writing, [p.file for p in group], self.folder, name)
            self._merging[task] = sum(p.rows for p in group)
            self._launched += 1
        self._first_at = time.monotonic() if self._pending else None

    def _take_groups(self, whole_groups_only: bool) -> list[list[PartRecord]]:
        """Pending parts in arrival order, cut into groups of at most `rows_per_file` rows."""
        groups: list[list[PartRecord]] = []
        group: list[PartRecord] = []
        rows = 0
        limit = self.settings.rows_per_file
        for part in self._pending:
            if group and rows + part.rows > limit:
                groups.append(group)
                group, rows = [], 0
            group.append(part)
            rows += part.rows
        if group and (rows >= limit or not whole_groups_only):
            groups.append(group)
            group = []
        self._pending = group
        return groups

    def _collect(self, *, wait: bool) -> None:
        """Count the merges that finished (all of them, waiting, when `wait`)."""
        if not self._merging:
            return
        tasks = list(self._merging)
        done, _ = ray.wait(tasks, num_returns=len(tasks), timeout=None if wait else 0)
        for task in done:
            record: PartRecord = ray.get(task)
            expected = self._merging.pop(task)
            if record.rows != expected:
                raise RuntimeError(f"{record.file} holds {record.rows} rows, {expected} were merged into it")
            self.written.append(WrittenFile(record.file, record.rows, record.ok, record.bytes))


class FlushTimer:
    """Calls `writer.flush_if_due` every second while the run streams, from a daemon thread."""

    def __init__(self, writer: PartCommitter):
        self.writer = writer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sfp-flush", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> FlushTimer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.writer.flush_if_due()
            except BaseException as exc:  # raised again in the driver's thread when the stream ends
                self.error = exc
                return
