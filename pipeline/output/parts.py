"""Data files written by the workers: labelled rows are staged where no reader looks, then merged into data
files of `rows_per_file` rows, each written once, whole, straight to its final name (docs/design.md,
"Exactly once").

Both steps run in Ray tasks, so no labelled byte passes through the driver;
the driver sees one small `PartRecord` per file. A staged part's name comes
from the ids it holds and a data file's from the run and the driver's own
sequence, so a retried task writes the same name again rather than a second
copy; a staged part whose record never reached the driver is simply never
merged, and goes with the run's staging folder. Writing a data file is the
commit: a local file is written beside its name and renamed onto it, an
object is one PUT, so a reader finds it whole or not at all.

Staged parts are Arrow IPC files, uncompressed: they live seconds, are read
once, and their payload (PNG bytes) does not compress; on an object store a
part costs one PUT, one GET and a share of one bulk DELETE (with Parquet
parts and per-file calls it was about ten requests: HEADs, ranged GETs, a
DELETE and the directory marker pyarrow puts back after it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..retry import Retry
from ..storage import Location
from .layout import STAGED_SUFFIX, data_file, relative_path, staged_file
from .rows import STATUS_OK

PARQUET_COMPRESSION = "zstd"
DEFAULT_ROWS_PER_FILE = 1000  # `output.rows_per_file`: rows in one data file (at most)
MERGE_READ_THREADS = 8  # staged parts a merge fetches at once
ROW_GROUP_BYTES = 64 << 20  # rows gathered into one row group of a data file (uncompressed, in memory)
# What a record of one written file says: where it is (relative to the output root), its rows, and its size.
PART_RECORD = pa.schema([("file", pa.string()), ("rows", pa.int64()), ("ok", pa.int64()), ("bytes", pa.int64())])


@dataclass(frozen=True)
class PartRecord:
    """One written file: staged (`_sfp/staging/<run>/...`) or committed (`data-<run>/part-...`)."""

    file: str  # relative to the output root
    rows: int
    ok: int
    bytes: int

    @classmethod
    def rows_of(cls, table: pa.Table) -> list[PartRecord]:
        return [cls(**row) for row in table.to_pylist()]


@dataclass(frozen=True)
class PartWriting:
    """Where a run's parts go and what their rows look like (picklable: it travels to every task)."""

    output: Location
    run_id: str
    schema: pa.Schema  # the rows' schema, with the output's identity in its metadata
    retry: Retry
    rows_per_file: int  # a staged part holds no more, so groups of parts can make files of at most this


def write_parquet(output: Location, path: str, tables: Iterable[pa.Table], schema: pa.Schema) -> int:
    """Write `tables` as one Parquet file at `path` under `output`, whole or not at all; returns its size.

    The one write recipe of the output. Consecutive tables share a row group up to `ROW_GROUP_BYTES`.
    Locally the file is streamed beside its name and renamed onto it. On object stores it is built in
    memory and sent in one PUT (a multipart upload aborted on failure): a streamed upload interrupted by
    an error would still be completed when its stream closes, leaving a file cut short under its name.
    """
    fs = output.filesystem()
    if isinstance(fs, pafs.LocalFileSystem):
        return _replace_local(fs, path, lambda stream: _write_to(stream, tables, schema))
    buffer = pa.BufferOutputStream()
    size = _write_to(buffer, tables, schema)
    output.fsspec().pipe_file(path, buffer.getvalue().to_pybytes())
    return size


def _replace_local(fs: pafs.LocalFileSystem, path: str, write: Callable[[pa.NativeFile], int]) -> int:
    """Stream a local file beside `path` and rename it onto `path`: a reader finds it whole or not at all."""
    partial = posixpath.join(posixpath.dirname(path), f".writing-{secrets.token_hex(6)}")
    fs.create_dir(posixpath.dirname(path), recursive=True)
    try:
        with fs.open_output_stream(partial) as stream:
            size = write(stream)
        os.replace(partial, path)
    except BaseException:
        if fs.get_file_info(partial).type == pafs.FileType.File:
            fs.delete_file(partial)
        raise
    return size


def _write_to(stream: pa.NativeFile, tables: Iterable[pa.Table], schema: pa.Schema) -> int:
    with pq.ParquetWriter(stream, schema, compression=PARQUET_COMPRESSION) as writer:
        for group in _row_groups(tables, schema):
            writer.write_table(group)
    return stream.tell()


def _row_groups(tables: Iterable[pa.Table], schema: pa.Schema) -> Iterable[pa.Table]:
    pending: list[pa.Table] = []
    held = 0
    for table in tables:
        pending.append(table.cast(schema))
        held += table.nbytes
        if held >= ROW_GROUP_BYTES:
            yield pa.concat_tables(pending)
            pending, held = [], 0
    if pending:
        yield pa.concat_tables(pending)


def ok_rows(rows: pa.Table) -> int:
    if not rows.num_rows:
        return 0
    return pc.sum(pc.equal(rows.column("status"), STATUS_OK)).as_py() or 0


def stage_parts(rows: pa.Table, *, writing: PartWriting) -> pa.Table:
    """Labelled rows -> staged parts of at most `rows_per_file` rows -> a `PART_RECORD` row each.

    A Ray stage after encoding. A part is named after the ids it holds, so a retried task rewrites the
    same file.
    """
    records = []
    output = writing.output
    for start in range(0, rows.num_rows, writing.rows_per_file):
        part = rows.slice(start, writing.rows_per_file).cast(writing.schema)
        ids = "\n".join(part.column("image_id").to_pylist()).encode()
        path = staged_file(output, writing.run_id, f"part-{hashlib.sha256(ids).hexdigest()[:24]}{STAGED_SUFFIX}")
        size = writing.retry.call(f"writing {output.uri_of(path)}", lambda p=part, to=path: _stage(output, to, p))
        records.append(PartRecord(relative_path(output, path), part.num_rows, ok_rows(part), size))
    return pa.Table.from_pylist([vars(r) for r in records], schema=PART_RECORD)


def _stage(output: Location, path: str, part: pa.Table) -> int:
    """One staged part: an Arrow IPC file, written whole (renamed locally, one PUT on object stores)."""
    buffer = pa.BufferOutputStream()
    with pa.ipc.new_file(buffer, part.schema) as writer:
        writer.write_table(part)
    data = buffer.getvalue()
    fs = output.filesystem()
    if isinstance(fs, pafs.LocalFileSystem):
        return _replace_local(fs, path, lambda stream: stream.write(data))
    output.fsspec().pipe_file(path, data.to_pybytes())
    return data.size


def _read_source(output: Location, fs: pafs.FileSystem, path: str) -> pa.Table:
    """A staged part in one GET (it is small), or a data file (`compact`'s sources) streamed by pyarrow."""
    if path.endswith(STAGED_SUFFIX):
        return pa.ipc.open_file(pa.py_buffer(_fetch_whole(output, path))).read_all()
    return pq.read_table(path, filesystem=fs)


def _fetch_whole(output: Location, path: str) -> bytes:
    if output.scheme == "file":
        with open(path, "rb") as file:
            return file.read()
    # s3fs asks an object's size first (a HEAD) to fetch big ones in ranges; a part is one GET
    single = {"max_concurrency": 1} if output.scheme == "s3" else {}
    return output.fsspec().cat_file(path, **single)


def merge_parts(
    writing: PartWriting, staged: Sequence[str], folder: str, name: str, delete_sources: bool = True
) -> PartRecord:
    """Staged parts (or data files, for `compact`) -> one data file `folder/name`, streamed a few parts at
    a time; then the parts go, in one bulk delete (unless `delete_sources` is false).

    Idempotent: a retry after the file was written (and its parts deleted) finds the file and reports it.
    """
    output, retry = writing.output, writing.retry
    fs = output.filesystem()
    target = data_file(output, folder, name)
    sources = [output.join(part) for part in staged]

    def merge() -> PartRecord:
        counts = {"rows": 0, "ok": 0}

        def tables() -> Iterable[pa.Table]:
            # Parts are small and each is one request: a few are fetched ahead, in order, never all at once.
            with ThreadPoolExecutor(max_workers=MERGE_READ_THREADS) as pool:
                ahead: deque[Future[pa.Table]] = deque()
                for source in sources:
                    ahead.append(pool.submit(_read_source, output, fs, source))
                    if len(ahead) > MERGE_READ_THREADS:
                        yield counted(ahead.popleft().result())
                while ahead:
                    yield counted(ahead.popleft().result())

        def counted(table: pa.Table) -> pa.Table:
            counts["rows"] += table.num_rows
            counts["ok"] += ok_rows(table)
            return table

        try:
            size = write_parquet(output, target, tables(), writing.schema)
        except FileNotFoundError:
            if fs.get_file_info(target).type == pafs.FileType.File:  # an earlier attempt merged and deleted them
                return _record_of(fs, output, target)
            raise FileNotFoundError(
                f"staged parts vanished before they were merged into {output.uri_of(target)}"
            ) from None
        return PartRecord(relative_path(output, target), counts["rows"], counts["ok"], size)

    record = retry.call(f"writing {output.uri_of(target)}", merge)
    if delete_sources:
        retry.call(f"deleting the parts merged into {output.uri_of(target)}", lambda: _delete_all(output, sources))
    return record


def _record_of(fs: pafs.FileSystem, output: Location, path: str) -> PartRecord:
    rows, ok = count_rows(fs, path)
    return PartRecord(relative_path(output, path), rows, ok, fs.get_file_info(path).size)


def count_rows(fs: pafs.FileSystem, path: str) -> tuple[int, int]:
    """(rows, ok rows) of a data file; only its status column is read."""
    status = pq.read_table(path, filesystem=fs, columns=["status"])
    return status.num_rows, ok_rows(status)


def _delete_all(output: Location, paths: Sequence[str]) -> None:
    """Delete `paths`, those already gone included: one bulk request per 1,000 objects on object stores."""
    fs = output.fsspec()
    if output.scheme == "file":
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return
    fs.rm(list(paths))
