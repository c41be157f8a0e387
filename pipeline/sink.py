"""The Parquet sink: complete files only, written where no reader looks until they are committed.

Ray's `write_parquet` writes straight into the destination (a reader can
catch a half-written local file) and has no per-file commit hook, so this
is a small `Datasink` that writes each task's rows to one file and
- incremental: stages it (`_sfp/staging/<run>/`) and moves it into the
  current data folder at once, so a run killed midway keeps every file it
  finished and a re-run skips those images;
- overwrite: writes it into the run's own new data folder, which no pointer
  names yet; `commit_overwrite` flips the pointer to it after the run
  succeeds (docs/design.md, "Output layout").
File names come from the run id and Ray's task index, never from input
paths; a retried write task rewrites its own file instead of adding one.
Storage calls ride out outages (`retry.Retry`), and each commit first checks
that the run still holds the output's lease (`lease.LeaseClaim`): a run that
lost it, or a killed driver's stray tasks, never add files under a successor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink, WriteResult

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

if TYPE_CHECKING:
    from ray.data._internal.execution.interfaces import TaskContext


@dataclass(frozen=True)
class WrittenFile:
    """What one write task produced (returned to the driver, summed into the run's counts)."""

    name: str  # file name, relative to the output root
    rows: int
    ok: int


class StagedParquetSink(Datasink[WrittenFile | None]):
    """One Parquet file per write task, of at least `rows_per_file` rows (the last may hold fewer)."""

    def __init__(
        self,
        output: Location,
        run_id: str,
        folder: str,
        schema: pa.Schema,
        *,
        commit_each_file: bool,
        rows_per_file: int,
        claim: LeaseClaim,
        retry: Retry,
    ):
        self.output = output
        self.run_id = run_id
        self.folder = folder
        self.schema = schema
        self.commit_each_file = commit_each_file
        self.rows_per_file = rows_per_file
        self.claim = claim
        self.retry = retry
        self.written: list[WrittenFile] = []

    @property
    def first_dir(self) -> str:
        """Where files are written first: the run's staging folder, or (overwrite) its own data folder."""
        return staging_dir(self.output, self.run_id) if self.commit_each_file else data_folder(self.output, self.folder)

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        fs = self.output.filesystem()
        for folder in {self.first_dir, data_folder(self.output, self.folder)}:
            self.retry.call(f"creating {self.output.uri_of(folder)}", lambda f=folder: fs.create_dir(f))

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> WrittenFile | None:
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        table = pa.concat_tables([t for t in tables if t.num_rows]) if any(t.num_rows for t in tables) else None
        if table is None:
            return None
        name = data_file_name(self.run_id, ctx.task_idx)
        fs = self.output.filesystem()
        final = data_file(self.output, self.folder, name)
        first = staged_file(self.output, self.run_id, name) if self.commit_each_file else final
        rows = table.cast(self.schema)
        self.retry.call(
            f"writing {self.output.uri_of(first)}",
            lambda: pq.write_table(rows, first, filesystem=fs, compression="zstd"),
        )
        if self.commit_each_file:
            self.claim.verify(self.retry)
            _move(self.output, first, final, self.retry)
        ok = pc.sum(pc.equal(table.column("status"), STATUS_OK)).as_py() or 0
        return WrittenFile(f"{self.folder}/{name}", table.num_rows, ok)

    def on_write_complete(self, write_result: WriteResult[WrittenFile | None]) -> None:
        self.written = [w for w in write_result.write_returns if w is not None]


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
