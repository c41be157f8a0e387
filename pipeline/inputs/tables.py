"""Parquet input: tables with a column of image bytes, such as Hugging Face datasets (docs/design.md, "Inputs").

Files are named like shards (a folder or prefix: every `.parquet` under it;
a glob; braces). Planning reads each file's footer in a Ray task and makes
one unit per row group, so the driver holds one row per row group, never
per image. Each unit is read with only the columns it needs: the id column
first, and the image column only if some row of the group is not labelled
yet. The image column holds bytes, or Hugging Face's Image struct
`{bytes, path}`: its bytes, else the file its path names, read like a list's
entry (`files.fetch_files`: the same storage layer and byte limit), a few
at a time. A URI or absolute path is read as written; a relative path is
relative to the table's own folder (`datasets` opens it from the current
folder, which on a worker means nothing), and climbing out with `..` is an
`unsafe entry` error row. Such a row's `uri` names the file read.

Ids: the `input.id_column` values (default: the table's `id` column when it
has one) as text; otherwise `<file name>#<row index in the file>`, which
stays the same as long as the file does. A row whose id is null gets that
positional id too. Ids should be unique across the input: two rows with one
id are both labelled, and a later incremental run skips both. A file whose
footer cannot be read gets one error row with its name as id.

Memory is bounded by bytes, not rows: a few KiB of compressed Parquet can
decompress to GiBs. The image column is read a few rows at a time, with
its dictionary kept as one (eight rows naming one 128 MiB value hold it
once), and each cell's length is checked before it is copied: a cell over
`resources.max_image_bytes` is an error row. When the footer says the
group's image column is larger than that uncompressed, the pages' headers
are read first (`pages.py`): a page over `page_limit` would have to be
decompressed whole, so the group's rows become error rows instead.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from sfp_core.uris import protocol_of

from ..errors import StorageUnavailable
from ..output import (
    DEFAULT_MAX_IMAGE_BYTES,
    REASON_CORRUPT,
    REASON_NO_IMAGE,
    REASON_OVER_BYTE_LIMIT,
    REASON_UNREADABLE,
    REASON_UNSAFE,
    REASON_UNSUPPORTED,
)
from ..request import DEFAULT_ID_COLUMN
from ..retry import Retry
from ..storage import Location, Redactor
from .files import fetch_files
from .ledger import record_unit
from .pages import chunk_pages
from .patterns import FilePattern, matching_files, name_blocks, planned_in_a_task
from .retrying import RetryingFile
from .samples import READ_BATCH_ROWS, KnownIds, SampleBatcher

TABLE_SUFFIXES = (".parquet", ".pq")
FOOTER_THREADS = 8  # footers read at once while planning: latency-bound on object stores
BROKEN_FILE = -1  # the `row_group` of a unit standing for a file whose footer could not be read
# The largest Parquet page read (uncompressed): pyarrow's own writer makes dictionary pages of 1,024 values,
# 300 MB for 300 KB images, so real files reach a few hundred MB; a reader holds about three copies of one.
MAX_PAGE_BYTES = 512 << 20
IMAGE_SLICE_ROWS = 4  # image cells decoded from Parquet at a time

GROUP_SCHEMA = pa.schema(
    [
        ("unit", pa.int64()),
        ("path", pa.string()),
        ("name", pa.string()),
        ("row_group", pa.int32()),
        ("first_row", pa.int64()),  # index in the file of the group's first row
        ("error", pa.string()),
    ]
)


@dataclass(frozen=True)
class TableReading:
    """What reading a table needs: where, which columns hold the image, the id and the kept fields."""

    location: Location
    image_column: str
    id_column: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    redact: Redactor = field(default_factory=Redactor)
    retry: Retry = field(default_factory=Retry)
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    @property
    def page_limit(self) -> int:
        """The largest page of the image column read (uncompressed); a group holding a larger one is refused."""
        return max(MAX_PAGE_BYTES, self.max_image_bytes)

    def id_column_of(self, schema: pa.Schema) -> str | None:
        if self.id_column is not None:
            return self.id_column
        return DEFAULT_ID_COLUMN if DEFAULT_ID_COLUMN in schema.names else None


def plan_row_groups(pattern: FilePattern, location: Location, num_cpus: float, retry: Retry) -> ray.data.Dataset:
    """Rows of `GROUP_SCHEMA`, one per row group of every file, made in a Ray task."""
    return planned_in_a_task(_list_row_groups, num_cpus, pattern=pattern, location=location, retry=retry)


def _list_row_groups(pattern: FilePattern, location: Location, retry: Retry) -> Iterator[pa.Table]:
    fs = location.filesystem()
    unit = 0

    def footer(path: str) -> pq.FileMetaData | str:
        try:
            return retry.call(f"reading {location.uri_of(path)}", lambda: pq.read_metadata(path, filesystem=fs))
        except StorageUnavailable:
            raise
        except Exception as exc:  # not Parquet, damaged, gone, forbidden: this file's error row
            return _footer_error(fs, path, exc)

    with ThreadPoolExecutor(max_workers=FOOTER_THREADS) as pool:
        for block in name_blocks(matching_files(pattern, location, TABLE_SUFFIXES, retry)):
            paths, names = block.column("path").to_pylist(), block.column("name").to_pylist()
            rows: list[tuple] = []
            for path, name, meta in zip(paths, names, pool.map(footer, paths), strict=True):
                if isinstance(meta, str):
                    rows.append((unit, path, name, BROKEN_FILE, 0, meta))
                    unit += 1
                    continue
                first = 0
                for group in range(meta.num_row_groups):
                    rows.append((unit, path, name, group, first, None))
                    first += meta.row_group(group).num_rows
                    unit += 1
            if rows:
                yield pa.table([list(c) for c in zip(*rows, strict=True)], schema=GROUP_SCHEMA)


def _footer_error(fs: Any, path: str, exc: Exception) -> str:
    """`<reason>: <detail>` for a file whose footer could not be read: unreadable (transient, read again by
    a later run) when the file cannot even be opened (gone, permission), corrupt when its bytes are no
    Parquet. Asking the storage again tells them apart; pyarrow raises OSError for both."""
    try:
        fs.open_input_file(path).close()
    except Exception as unopenable:
        return f"{REASON_UNREADABLE}: {type(unopenable).__name__}: {unopenable}"
    return f"{REASON_CORRUPT}: not a readable Parquet file: {type(exc).__name__}: {exc}"


def read_row_groups(
    units: pa.Table, *, reading: TableReading, known: KnownIds, ledger: ray.actor.ActorHandle
) -> Iterator[pa.Table]:
    """Row-group rows -> sample rows (`samples.read_schema`); each group reported to `ledger` when done."""
    for unit in units.to_pylist():
        batcher = SampleBatcher(tuple(reading.fields), known)
        yield from group_rows(reading, unit, batcher)
        record_unit(ledger, unit["unit"], batcher.samples, batcher.emitted)


def group_rows(reading: TableReading, unit: dict[str, Any], batcher: SampleBatcher) -> Iterator[pa.Table]:
    """One row group's sample rows (`unit`: a `GROUP_SCHEMA` row), its last short block included."""
    yield from _GroupReader(reading, unit, batcher).rows()
    yield from batcher.finish()


class _GroupReader:
    def __init__(self, reading: TableReading, unit: dict[str, Any], batcher: SampleBatcher):
        self.reading, self.unit, self.batcher = reading, unit, batcher
        self.uri = reading.location.uri_of(unit["path"])
        self.id_column: str | None = None  # resolved from the file's schema when the group is read

    def rows(self) -> Iterator[pa.Table]:
        unit, reading = self.unit, self.reading
        if unit["row_group"] == BROKEN_FILE:
            reason, _, detail = unit["error"].partition(": ")
            yield from self._broken(reason, detail)
            return
        try:
            table = self._read_group()
        except StorageUnavailable:
            raise
        except Exception as exc:  # gone or damaged since planning
            yield from self._broken(REASON_UNREADABLE, f"{type(exc).__name__}: {exc}")
            return
        ids = self._ids(table)
        if all(i in self.batcher.known for i in ids):
            for image_id in ids:  # counted as seen; none is read
                yield from self.batcher.add(image_id, "", None, None)
            return
        values = [self._field_column(table, source) for source in reading.fields.values()]
        linked: list[tuple[int, str]] = []  # (row, stored path) of cells naming a file, fetched a block at a time
        for index, (data, error, path) in enumerate(self._images(len(ids))):
            if path is not None and ids[index] not in self.batcher.known:
                linked.append((index, path))
                if len(linked) == READ_BATCH_ROWS:
                    yield from self._linked_rows(linked, ids, values)
                    linked = []
                continue
            yield from self.batcher.add(ids[index], self._row_uri(index), data, error, [v[index] for v in values])
        yield from self._linked_rows(linked, ids, values)

    def _row_uri(self, index: int) -> str:
        return f"{self.uri}#row={self.unit['first_row'] + index}"

    def _linked_rows(
        self, linked: list[tuple[int, str]], ids: list[str], values: list[list[str | None]]
    ) -> Iterator[pa.Table]:
        """The rows of cells naming a file, those files read together (threads: object stores are slow)."""
        targets = [self._linked_file(index, path) for index, path in linked]
        fetched = fetch_files(
            [wanted for wanted, _ in targets],
            self.reading.redact,
            self.reading.retry,
            self.reading.max_image_bytes,
            hosts_per_entry=True,  # paths may name other stores: one that does not resolve fails its rows only
        )
        for (index, _), (_, uri), (data, error) in zip(linked, targets, fetched, strict=True):
            yield from self.batcher.add(ids[index], uri, data, error, [v[index] for v in values])

    def _linked_file(self, index: int, stored: str) -> tuple[tuple[Location, str, str | None], str]:
        """(what `fetch_files` reads, the row's `uri`) for a cell's path, under a list entry's rules: a URI (only
        the protocols we read) or an absolute path as written, a relative one inside the table's own folder. A
        refused path reads nothing and the row's `uri` names the table row (never the raw text: user info)."""
        reading = self.reading
        if stored.startswith("/") or protocol_of(stored) is not None:
            try:
                location = Location.parse(stored, reading.location.options, what="image path")
            except Exception as exc:  # a protocol we do not read, a chained URL, a URI without a bucket
                return (reading.location, "", reading.redact(f"{REASON_UNSUPPORTED}: {exc}")), self._row_uri(index)
            return (location, location.path, None), location.uri
        if ".." in stored.split("/"):
            problem = reading.redact(f"{REASON_UNSAFE}: image path {stored!r} is not inside the table's folder")
            return (reading.location, "", problem), self._row_uri(index)
        path = posixpath.join(posixpath.dirname(self.unit["path"]), stored)
        return (reading.location, path, None), reading.location.uri_of(path)

    def _read_group(self) -> pa.Table:
        """The group's id and field columns, those of them the file has."""
        reading, path = self.reading, self.unit["path"]

        def read() -> pa.Table:
            with reading.location.filesystem().open_input_file(path) as file:
                parquet = pq.ParquetFile(file)
                self.id_column = reading.id_column_of(parquet.schema_arrow)
                wanted = [self.id_column, *reading.fields.values()]
                present = [c for c in dict.fromkeys(wanted) if c in parquet.schema_arrow.names]
                return parquet.read_row_group(self.unit["row_group"], columns=present)

        return reading.retry.call(f"reading {self.uri}", read)

    def _images(self, rows: int) -> Iterator[tuple[bytes | None, str | None, str | None]]:
        """(bytes, None, None), (None, why not, None) or (None, None, the path of the file holding it) for each of
        the group's `rows`, a slice of rows in memory at a time."""
        reading, group, column = self.reading, self.unit["row_group"], self.reading.image_column
        fs = reading.location.filesystem()
        given = 0
        try:
            with reading.retry.call(f"opening {self.uri}", lambda: fs.open_input_file(self.unit["path"])) as native:
                file = RetryingFile(native, self.uri, reading.retry)
                schema = pq.read_schema(file)
                if column not in schema.names:
                    detail = f"column {column!r} is not in {self.unit['name']} (it has {', '.join(schema.names)})"
                    yield from [(None, f"{REASON_NO_IMAGE}: {detail}", None)] * rows
                    return
                leaf, dictionary = _image_leaf(schema, column)
                parquet = pq.ParquetFile(file, read_dictionary=[leaf] if dictionary else None)
                too_large = self._oversized_page(file, parquet.metadata.row_group(group), leaf)
                if too_large:
                    yield from [(None, too_large, None)] * rows
                    return
                slices = parquet.iter_batches(batch_size=IMAGE_SLICE_ROWS, row_groups=[group], columns=[column])
                for batch in slices:
                    images = batch.column(0)
                    for image, length in zip(images, _byte_lengths(images), strict=True):
                        given += 1
                        if length is not None and length > reading.max_image_bytes:
                            limit = reading.max_image_bytes
                            yield None, f"{REASON_OVER_BYTE_LIMIT}: the image is {length} bytes (limit {limit})", None
                        elif path := stored_path(value := image.as_py()):
                            yield None, None, path
                        else:
                            yield *image_bytes(value, column), None
        except StorageUnavailable:
            raise
        except Exception as exc:  # damaged after the rows before it: those keep their rows, the rest say why
            problem = self.reading.redact(f"{REASON_CORRUPT}: {type(exc).__name__}: {exc}")
            yield from [(None, problem, None)] * (rows - given)
            return
        if given < rows:  # the file changed since its ids were read
            ended = f"{REASON_CORRUPT}: the row group ends after {given} of {rows} rows"
            yield from [(None, ended, None)] * (rows - given)

    def _oversized_page(self, file: RetryingFile, group: pq.RowGroupMetaData, leaf: str) -> str | None:
        """Why the group's image column cannot be read within the page limit, or None (from page headers only,
        read when the footer says the column is larger uncompressed than one image may be)."""
        chunk = next(
            (group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema == leaf), None
        )
        if chunk is None or chunk.total_uncompressed_size <= self.reading.max_image_bytes:
            return None
        offsets = [chunk.data_page_offset]
        if chunk.has_dictionary_page and chunk.dictionary_page_offset:
            offsets.append(chunk.dictionary_page_offset)
        limit = self.reading.page_limit
        for page in chunk_pages(file.read_at, min(offsets), chunk.total_compressed_size):
            if page.uncompressed > limit:
                return (
                    f"{REASON_OVER_BYTE_LIMIT}: row group {self.unit['row_group']} of {self.unit['name']} stores its "
                    f"images in a page of {page.uncompressed} bytes uncompressed (limit {limit}); not read"
                )
        return None

    def _ids(self, table: pa.Table) -> list[str]:
        first, name = self.unit["first_row"], self.unit["name"]
        column = self.id_column if self.id_column in table.column_names else None
        values = table.column(column).to_pylist() if column else [None] * table.num_rows
        return [f"{name}#{first + i}" if v is None else str(v) for i, v in enumerate(values)]

    def _field_column(self, table: pa.Table, source: str) -> list[str | None]:
        if source not in table.column_names:
            return [None] * table.num_rows
        return [_as_text(v) for v in table.column(source).to_pylist()]

    def _broken(self, reason: str, detail: str) -> Iterator[pa.Table]:
        message = self.reading.redact(f"{reason}: {self.unit['name']}: {detail}")
        yield from self.batcher.add(self.unit["name"], self.uri, None, message, [None] * len(self.reading.fields))


def _image_leaf(schema: pa.Schema, column: str) -> tuple[str, bool]:
    """The image column's leaf holding the bytes (`image` or Hugging Face's `image.bytes`), and whether it is
    binary (then read as a dictionary: rows naming one stored value hold it once)."""
    kind = schema.field(column).type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        return f"{column}.bytes", _is_binary(kind.field("bytes").type)
    return column, _is_binary(kind)


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _byte_lengths(images: pa.Array) -> list[int | None]:
    """Each cell's image length in bytes, from the offsets alone (nothing copied); None where unknown."""
    if pa.types.is_struct(images.type):
        if images.type.get_field_index("bytes") < 0:
            return [None] * len(images)
        images = images.field("bytes")
    if pa.types.is_dictionary(images.type):
        return pc.binary_length(images.dictionary).take(images.indices).to_pylist()
    if _is_binary(images.type):
        return pc.binary_length(images).to_pylist()
    return [None] * len(images)


def stored_path(value: Any) -> str | None:
    """The path of an Image struct that holds no bytes (`datasets` then opens the file it names), else None."""
    if isinstance(value, dict) and not value.get("bytes") and isinstance(value.get("path"), str):
        return value["path"] or None
    return None


def image_bytes(value: Any, column: str) -> tuple[bytes | None, str | None]:
    """A cell of the image column -> (bytes, None) or (None, why not)."""
    if isinstance(value, dict):  # Hugging Face's Image feature: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return value["bytes"], None
        path = value.get("path")
        where = f" (only a path: {path!r})" if path else ""
        return None, f"{REASON_NO_IMAGE}: column {column!r} holds no image bytes{where}"
    if isinstance(value, (bytes, bytearray)) and value:
        return bytes(value), None
    if value is None or value == b"":
        return None, f"{REASON_NO_IMAGE}: column {column!r} is empty in this row"
    return None, f"{REASON_NO_IMAGE}: column {column!r} holds {type(value).__name__}, not image bytes"


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return json.dumps(value, default=str)
