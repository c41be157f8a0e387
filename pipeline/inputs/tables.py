"""Parquet input: tables with a column of image bytes, such as Hugging Face datasets (docs/design.md, "Inputs").

Files are named like shards (a folder or prefix: every `.parquet` under it;
a glob; braces). Planning reads each file's footer in a Ray task and makes
one unit per row group, so the driver holds one row per row group, never
per image. Each unit is read with only the columns it needs: the id column
first, and the image column only if some row of the group is not labelled
yet. The image column holds bytes, or Hugging Face's Image struct
`{bytes, path}` (its `bytes`).

Ids: the `input.id_column` values (default: the table's `id` column when it
has one) as text; otherwise `<file name>#<row index in the file>`, which
stays the same as long as the file does. A row whose id is null gets that
positional id too. Ids should be unique across the input: two rows with one
id are both labelled, and a later incremental run skips both. A file whose
footer cannot be read gets one error row with its name as id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from ..errors import StorageUnavailable
from ..output import REASON_CORRUPT, REASON_NO_IMAGE, REASON_UNREADABLE
from ..request import DEFAULT_ID_COLUMN
from ..retry import Retry
from ..storage import Location, Redactor
from .ledger import record_unit
from .patterns import FilePattern, matching_files, name_blocks, planned_in_a_task
from .samples import KnownIds, SampleBatcher

TABLE_SUFFIXES = (".parquet", ".pq")
FOOTER_THREADS = 8  # footers read at once while planning: latency-bound on object stores
BROKEN_FILE = -1  # the `row_group` of a unit standing for a file whose footer could not be read

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
        except Exception as exc:  # not Parquet, damaged, gone: this file's error row
            return f"{type(exc).__name__}: {exc}"

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


def read_row_groups(
    units: pa.Table, *, reading: TableReading, known: KnownIds, ledger: ray.actor.ActorHandle
) -> Iterator[pa.Table]:
    """Row-group rows -> sample rows (`samples.read_schema`); each group reported to `ledger` when done."""
    for unit in units.to_pylist():
        batcher = SampleBatcher(tuple(reading.fields), known)
        yield from _GroupReader(reading, unit, batcher).rows()
        yield from batcher.finish()
        record_unit(ledger, unit["unit"], batcher.samples, batcher.emitted)


class _GroupReader:
    def __init__(self, reading: TableReading, unit: dict[str, Any], batcher: SampleBatcher):
        self.reading, self.unit, self.batcher = reading, unit, batcher
        self.uri = reading.location.uri_of(unit["path"])
        self.id_column: str | None = None  # resolved from the file's schema when the group is read

    def rows(self) -> Iterator[pa.Table]:
        unit, reading = self.unit, self.reading
        if unit["row_group"] == BROKEN_FILE:
            yield from self._broken(REASON_CORRUPT, f"not a readable Parquet file: {unit['error']}")
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
        images = self._read_group([reading.image_column]).column(reading.image_column)
        values = [self._field_column(table, source) for source in reading.fields.values()]
        for index, image_id in enumerate(ids):
            data, error = image_bytes(images[index].as_py(), reading.image_column)
            row_uri = f"{self.uri}#row={unit['first_row'] + index}"
            yield from self.batcher.add(image_id, row_uri, data, error, [v[index] for v in values])

    def _read_group(self, columns: list[str] | None = None) -> pa.Table:
        """The group's id and field columns (or `columns`), those of them the file has."""
        reading, path = self.reading, self.unit["path"]

        def read() -> pa.Table:
            with reading.location.filesystem().open_input_file(path) as file:
                parquet = pq.ParquetFile(file)
                names = parquet.schema_arrow.names
                if columns is not None and columns[0] not in names:
                    raise KeyError(f"the file has no column {columns[0]!r} (it has {', '.join(names)})")
                self.id_column = reading.id_column_of(parquet.schema_arrow)
                wanted = columns or [self.id_column, *reading.fields.values()]
                present = [c for c in dict.fromkeys(wanted) if c in names]
                return parquet.read_row_group(self.unit["row_group"], columns=present)

        return reading.retry.call(f"reading {self.uri}", read)

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
