"""The Parquet sink: complete files only, staged first (`output.staging_dir`), then committed.

Ray's `write_parquet` writes straight into the destination (a reader can
catch a half-written local file) and has no per-file commit hook, so this
is a small `Datasink` that writes each task's rows to one staged file and
- incremental: moves it into the output at once, so a run killed midway
  keeps every file it finished and a re-run skips those images;
- overwrite: leaves it staged; `commit_overwrite` swaps the whole output
  after the run succeeds (old files out, then new files in: never a mix).
File names come from the run id and Ray's task index, never from input
paths; a retried write task rewrites its own file instead of adding one.
Storage calls ride out outages (`retry.Retry`), and each commit first checks
that the run still holds the output's lease (`lease.LeaseClaim`): a run that
lost it, or a killed driver's stray tasks, never add files under a successor.
"""

from __future__ import annotations

import json
import posixpath
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
    SCHEMA,
    STATUS_OK,
    committed_file,
    data_file_name,
    data_files,
    journal_path,
    staged_file,
    staging_dir,
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
        *,
        commit_each_file: bool,
        rows_per_file: int,
        claim: LeaseClaim,
        retry: Retry,
    ):
        self.output = output
        self.run_id = run_id
        self.commit_each_file = commit_each_file
        self.rows_per_file = rows_per_file
        self.claim = claim
        self.retry = retry
        self.written: list[WrittenFile] = []

    @property
    def staging_dir(self) -> str:
        return staging_dir(self.output, self.run_id)

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        fs = self.output.filesystem()
        self.retry.call(f"creating {self.output.uri_of(self.staging_dir)}", lambda: fs.create_dir(self.staging_dir))

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> WrittenFile | None:
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        table = pa.concat_tables([t for t in tables if t.num_rows]) if any(t.num_rows for t in tables) else None
        if table is None:
            return None
        name = data_file_name(self.run_id, ctx.task_idx)
        fs = self.output.filesystem()
        staged = staged_file(self.output, self.run_id, name)
        rows = table.cast(SCHEMA)
        self.retry.call(
            f"writing {self.output.uri_of(staged)}",
            lambda: pq.write_table(rows, staged, filesystem=fs, compression="zstd"),
        )
        if self.commit_each_file:
            self.claim.verify(self.retry)
            _move(self.output, staged, committed_file(self.output, name), self.retry)
        ok = pc.sum(pc.equal(table.column("status"), STATUS_OK)).as_py() or 0
        return WrittenFile(name, table.num_rows, ok)

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


def commit_overwrite(output: Location, run_id: str, written: list[WrittenFile], retry: Retry) -> None:
    """Replace the output's data files with this run's staged ones: every old file out, then the new ones in.

    First a journal naming both sets is written into the run's staging
    folder; a run killed anywhere after that is completed by the next run
    (`roll_forward`), so the output ends all new, never mixed. Killed before
    it, the old output stands and the staging is dropped. A reader listing
    meanwhile sees old files only, nothing, or new files only.
    """
    new = [file.name for file in written]
    old = [posixpath.relpath(path, output.path) for path in data_files(output, retry)]
    journal = {"delete": [name for name in old if name not in new], "move": new}
    _write_journal(output, run_id, journal, retry)
    _step("journal")
    _apply_journal(output, run_id, journal, retry)


def roll_forward(output: Location, retry: Retry) -> list[str]:
    """Finish the overwrite commits that runs killed mid-commit left journalled; returns their run ids."""
    fs = output.filesystem()
    selector = pafs.FileSelector(staging_dir(output), allow_not_found=True)
    finished = []
    for entry in retry.call(f"listing {output.uri_of(staging_dir(output))}", lambda: fs.get_file_info(selector)):
        run_id = posixpath.basename(entry.path)
        journal_file = journal_path(output, run_id)
        if entry.type != pafs.FileType.Directory or fs.get_file_info(journal_file).type != pafs.FileType.File:
            continue
        with fs.open_input_stream(journal_file) as stream:
            journal = json.loads(stream.read())
        _apply_journal(output, run_id, journal, retry)
        finished.append(run_id)
    return finished


def _write_journal(output: Location, run_id: str, journal: dict[str, list[str]], retry: Retry) -> None:
    fs = output.filesystem()
    final = journal_path(output, run_id)
    partial = f"{final}.partial"
    data = json.dumps(journal).encode()

    def write() -> None:
        with fs.open_output_stream(partial) as stream:
            stream.write(data)
        fs.move(partial, final)

    retry.call(f"writing {output.uri_of(final)}", write)


def _apply_journal(output: Location, run_id: str, journal: dict[str, list[str]], retry: Retry) -> None:
    """Delete the journal's old files and move its staged files into place; every step may be repeated."""
    fs = output.filesystem()
    for name in journal["delete"]:
        _delete(output, committed_file(output, name), retry)
        _step(f"deleted {name}")
    for name in journal["move"]:
        staged = staged_file(output, run_id, name)
        if fs.get_file_info(staged).type == pafs.FileType.File:
            _move(output, staged, committed_file(output, name), retry)
        _step(f"moved {name}")


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
