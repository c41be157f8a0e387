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
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import ray

from .lease import LeaseClaim
from .output import (
    PartRecord,
    PartWriting,
    Pointer,
    data_file_name,
    data_folder,
    folder_files,
    merge_parts,
    relative_path,
    staging_dir,
    stale_folders,
)
from .retry import Retry
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


def _delete(output: Location, path: str, retry: Retry, *, directory: bool = False) -> None:
    """Delete a file (or a directory tree); already gone counts as done."""
    fs = output.filesystem()

    def delete() -> None:
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.Directory and directory:
            fs.delete_dir(path)
        elif kind == pafs.FileType.File and not directory:
            fs.delete_file(path)

    retry.call(f"deleting {output.uri_of(path)}", delete)


# Called with the name of each step of an overwrite commit; tests set it to stop a driver there.
commit_step_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if commit_step_hook is not None:
        commit_step_hook(name)


def commit_overwrite(output: Location, current: Pointer, retry: Retry) -> None:
    """Make the run's data folder the output: one write of the pointer (the card follows it).

    Killed before it, the old version stands and the next run deletes the new
    folder; killed after it, the new version stands and the next run rewrites
    the card. The replaced folder stays for `KEEP_REPLACED_S`.
    """
    _step("written")
    current.write(output, retry)
    _step("flipped")


def discard_folder(output: Location, folder: str, retry: Retry) -> None:
    """Delete a data folder no pointer names (a failed overwrite's)."""
    _delete(output, data_folder(output, folder), retry, directory=True)


def tidy(output: Location, pointer: Pointer | None, retry: Retry) -> Pointer | None:
    """What dead runs left (staging, unflipped data folders) and replaced folders past their time go.

    Called under the lease before a run writes, with the pointer `output.checked_pointer` read (never one
    naming a missing folder); returns the pointer as it now stands.
    """
    remove_staging(output, retry)
    for folder in stale_folders(output, pointer, retry):
        discard_folder(output, folder, retry)
    if pointer is None:
        return None
    kept, expired = pointer.expire(time.time())
    if expired:
        kept.write(output, retry)  # the pointer stops naming them before they go
        for folder in expired:
            discard_folder(output, folder, retry)
    return kept


def remove_late_files(output: Location, folder: str, keep: set[str], retry: Retry) -> list[str]:
    """Delete the data files of `folder` that are not in `keep` (relative names); returns what went.

    Called under the lease when a run commits: `keep` holds the files there when the run started and those
    it wrote, so what else is there was written late by a run that died (an upload still in flight when its
    driver went), after this run had read which images were labelled: rows this run labelled again.
    """
    late = [path for path in folder_files(output, folder, retry) if relative_path(output, path) not in keep]
    for path in late:
        _delete(output, path, retry)
    return [relative_path(output, path) for path in late]


def remove_staging(output: Location, retry: Retry, run_id: str | None = None) -> None:
    """Drop one run's staging directory (whatever it left there), and the staging root itself once empty.

    Without `run_id`, every run's: what is staged while this run holds the
    output's lease belongs to runs that died.
    """
    fs = output.filesystem()
    root = staging_dir(output)
    if run_id is not None:
        _delete(output, staging_dir(output, run_id), retry, directory=True)
        selector = pafs.FileSelector(root, allow_not_found=True)
        if retry.call(f"listing {output.uri_of(root)}", lambda: fs.get_file_info(selector)):
            return
    _delete(output, root, retry, directory=True)
