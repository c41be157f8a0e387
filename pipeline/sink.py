"""The writer: the driver turns the stream of labelled rows into complete Parquet files, committed as it goes.

Rows reach the driver as Ray Data streams them (`Dataset.iter_batches`); the
writer buffers them and writes one file when it holds `rows_per_file` rows,
or `commit_every_s` after its first row, whichever comes first, and on demand
(`flush`: the end of the run, Ctrl-C, SIGTERM). So an interrupted run keeps
all but the last seconds of its work, and the driver sees every row as it
lands (live progress). Writing in the driver also makes commits simple: file
names are a sequence of the run's own, a Ray task retry never writes a file,
and the lease is checked before each commit in one place.
- incremental: each file is staged (`_sfp/staging/<run>/`) and moved into
  the current data folder, one rename (or one copy on object stores);
- overwrite: each file goes straight into the run's own new data folder,
  which no pointer names until `commit_overwrite` flips it (docs/design.md,
  "Output layout").
Storage calls ride out outages (`retry.Retry`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .lease import LeaseClaim
from .output import (
    STATUS_OK,
    Pointer,
    data_file,
    data_file_name,
    data_folder,
    staged_file,
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


@dataclass(frozen=True)
class WriterSettings:
    rows_per_file: int
    commit_every_s: float
    commit_each_file: bool  # incremental: into the current folder at once; overwrite: into the run's folder


class OutputWriter:
    """Buffers rows in the driver and commits them as complete Parquet files (see the module's docstring).

    `add` and `flush` may be called from different threads (a timer flushes a
    buffer that waited `commit_every_s`); one lock keeps a file whole.
    """

    def __init__(
        self,
        output: Location,
        run_id: str,
        folder: str,
        schema: pa.Schema,
        settings: WriterSettings,
        *,
        claim: LeaseClaim,
        retry: Retry,
    ):
        self.output = output
        self.run_id = run_id
        self.folder = folder
        self.schema = schema
        self.settings = settings
        self.claim = claim
        self.retry = retry
        self.written: list[WrittenFile] = []
        self._buffer: list[pa.Table] = []
        self._buffered_rows = 0
        self._first_row_at: float | None = None
        self._lock = threading.Lock()
        self._created = False

    @property
    def commit_each_file(self) -> bool:
        return self.settings.commit_each_file

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.written)

    def add(self, rows: pa.Table) -> tuple[int, int]:
        """Buffer labelled rows; write a file whenever the buffer is full. Returns (ok, error) rows added."""
        ok = _ok_rows(rows)
        with self._lock:
            if rows.num_rows:
                self._buffer.append(rows.cast(self.schema))
                self._buffered_rows += rows.num_rows
                self._first_row_at = self._first_row_at or time.monotonic()
            while self._buffered_rows >= self.settings.rows_per_file:
                self._write_buffer(self.settings.rows_per_file)
        return ok, rows.num_rows - ok

    def flush_if_due(self) -> None:
        """Write the buffer if its first row waited `commit_every_s` (called by a timer)."""
        with self._lock:
            started = self._first_row_at
            if started is not None and time.monotonic() - started >= self.settings.commit_every_s:
                self._write_buffer()

    def flush(self) -> None:
        """Write whatever is buffered (the end of the run, or an interruption)."""
        with self._lock:
            self._write_buffer()

    def _write_buffer(self, rows: int | None = None) -> None:
        """Write the first `rows` buffered rows (all by default) as one file; the rest stay buffered.

        The buffer gives the rows up after the file is written where no reader looks and before it is
        committed: an interruption (Ctrl-C and SIGTERM raise anywhere in this thread) or a failed commit
        can then cost this run those rows, which the next run labels, but never commits them twice.
        """
        if not self._buffered_rows:
            return
        table = pa.concat_tables(self._buffer)
        rows = table.num_rows if rows is None else rows
        part, rest = table.slice(0, rows), table.slice(rows)
        name = data_file_name(self.run_id, len(self.written))
        first, final = self._write_file(part, name)
        self.written.append(WrittenFile(f"{self.folder}/{name}", part.num_rows, _ok_rows(part)))
        self._buffer, self._buffered_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
        self._first_row_at = time.monotonic() if rest.num_rows else None
        if self.commit_each_file:
            self.claim.verify(self.retry)
            _move(self.output, first, final, self.retry)

    def _write_file(self, table: pa.Table, name: str) -> tuple[str, str]:
        """Write `table` where no reader looks yet; (that path, the committed path)."""
        fs = self.output.filesystem()
        final = data_file(self.output, self.folder, name)
        first = staged_file(self.output, self.run_id, name) if self.commit_each_file else final
        if not self._created:
            folders = [data_folder(self.output, self.folder)]
            folders += [staging_dir(self.output, self.run_id)] if self.commit_each_file else []
            for folder in folders:
                self.retry.call(f"creating {self.output.uri_of(folder)}", lambda f=folder: fs.create_dir(f))
            self._created = True
        self.retry.call(
            f"writing {self.output.uri_of(first)}",
            lambda: pq.write_table(table, first, filesystem=fs, compression="zstd"),
        )
        return first, final


def _ok_rows(rows: pa.Table) -> int:
    if not rows.num_rows:
        return 0
    return pc.sum(pc.equal(rows.column("status"), STATUS_OK)).as_py() or 0


class FlushTimer:
    """Calls `writer.flush_if_due` every second while the run streams, from a daemon thread."""

    def __init__(self, writer: OutputWriter):
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


def _move(output: Location, source: str, target: str, retry: Retry) -> None:
    """Move a file; finding it already moved (an earlier attempt whose answer was lost) counts as done."""
    fs = output.filesystem()

    def move() -> None:
        try:
            fs.move(source, target)
        except FileNotFoundError:
            if fs.get_file_info(target).type != pafs.FileType.File:
                raise

    retry.call(f"committing {output.uri_of(target)}", move)


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

    Called under the lease before a run writes; returns the pointer as it now stands.
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
