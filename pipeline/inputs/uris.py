"""List input: a text, CSV or Parquet file naming one image per row (docs/design.md, "Inputs").

Text: one URI or path per line (blank lines and lines starting with `#` are
skipped). CSV (`.csv`, `.tsv`) and Parquet (`.parquet`, `.pq`): a `uri` column,
optionally an id column (`input.id_column`, default `id` when present) and
the columns `input.fields` keeps. Each entry is `s3://`, `gs://`, `file://`
or any fsspec URI, or a path: absolute, or relative to the list's own
folder (an entry climbing out of it with `..` is an error row). Every image
is read through the same storage layer as a folder's files, with the
input's storage options and the same outage retries.

The image id is the row's id, else the entry as written (without any user
info). The list is planned like a folder's listing: read in a Ray task
into the object store, never into the driver; an id listed twice is
labelled once.
"""

from __future__ import annotations

import functools
import io
import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import ray

from ..errors import InputUnusable
from ..output import DEFAULT_MAX_IMAGE_BYTES, REASON_UNSAFE, REASON_UNSUPPORTED
from ..request import DEFAULT_ID_COLUMN
from ..retry import Retry
from ..storage import Location, Redactor, public_uri
from .files import fetch_files
from .patterns import planned_in_a_task

log = logging.getLogger(__name__)

URI_COLUMN = "uri"
ENTRIES_PER_BLOCK = 10_000
_TEXT_CHUNK = 8 << 20


@dataclass(frozen=True)
class ListReading:
    """The list file, its columns, and the storage options every listed URI is read with."""

    location: Location
    id_column: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    redact: Redactor = field(default_factory=Redactor)
    retry: Retry = field(default_factory=Retry)
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    @property
    def kind(self) -> str:
        name = self.location.path.lower()
        if name.endswith((".parquet", ".pq")):
            return "parquet"
        return "csv" if name.endswith((".csv", ".tsv")) else "text"

    def listing_schema(self) -> pa.Schema:
        """The plan's rows: id, the URI to read, a known error, the kept fields."""
        base = [("image_id", pa.string()), ("path", pa.string()), ("error", pa.string())]
        return pa.schema([*base, *((name, pa.string()) for name in self.fields)])


def plan_list(reading: ListReading, num_cpus: float) -> ray.data.Dataset:
    """The list's entries as listing rows, read in a Ray task."""
    return planned_in_a_task(_list_entries, num_cpus, reading=reading)


def _list_entries(reading: ListReading) -> Iterator[pa.Table]:
    seen: set[str] = set()
    duplicates = 0
    schema = reading.listing_schema()
    for block in _entry_blocks(reading):
        rows = []
        for entry in block:
            image_id, path, error = _resolve(reading.location, entry[URI_COLUMN], entry.get("__id__"))
            if image_id in seen:
                duplicates += 1
                continue
            seen.add(image_id)
            rows.append((image_id, path, error, *(_text(entry.get(f"__field_{n}__")) for n in reading.fields)))
        if rows:
            yield pa.table([list(c) for c in zip(*rows, strict=True)], schema=schema)
    if duplicates:
        log.warning("%s lists %d ids more than once; each is labelled once", reading.location.uri, duplicates)


def _entry_blocks(reading: ListReading) -> Iterator[list[dict[str, Any]]]:
    """Rows of `{uri, __id__, __field_<name>__}`, a block at a time."""
    location, retry = reading.location, reading.retry
    fs = location.filesystem()
    if reading.kind == "text":
        yield from _text_entries(retry.call(f"reading {location.uri}", functools.partial(_read_all, fs, location.path)))
        return
    if reading.kind == "parquet":
        yield from _parquet_entries(reading, fs)
        return
    data = retry.call(f"reading {location.uri}", functools.partial(_read_all, fs, location.path))
    delimiter = "\t" if location.path.lower().endswith(".tsv") else ","
    table = pacsv.read_csv(
        io.BytesIO(data),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(strings_can_be_null=False, column_types=_all_text(data, delimiter)),
    )
    for batch in table.to_batches(ENTRIES_PER_BLOCK):
        yield _renamed_rows(reading, pa.Table.from_batches([batch]))


def _parquet_entries(reading: ListReading, fs: Any) -> Iterator[list[dict[str, Any]]]:
    """A Parquet list, a row group's worth of batches at a time, with only the columns it needs."""
    location = reading.location
    with reading.retry.call(f"opening {location.uri}", lambda: fs.open_input_file(location.path)) as file:
        parquet = pq.ParquetFile(file)
        columns = [c for c in _wanted_columns(reading, parquet.schema_arrow.names) if c]
        for batch in parquet.iter_batches(batch_size=ENTRIES_PER_BLOCK, columns=columns):
            yield _renamed_rows(reading, pa.Table.from_batches([batch]))


def _wanted_columns(reading: ListReading, names: list[str]) -> list[str | None]:
    if URI_COLUMN not in names:
        raise InputUnusable(
            f"input {reading.location.uri} has no {URI_COLUMN!r} column (it has {', '.join(names)}); "
            f"a list needs one URI per row in a column named {URI_COLUMN!r}"
        )
    return [URI_COLUMN, id_column_of(reading, names), *reading.fields.values()]


def id_column_of(reading: ListReading, names: list[str]) -> str | None:
    if reading.id_column is not None:
        if reading.id_column not in names:
            raise InputUnusable(f"input {reading.location.uri} has no column {reading.id_column!r} (input.id_column)")
        return reading.id_column
    return DEFAULT_ID_COLUMN if DEFAULT_ID_COLUMN in names else None


def _renamed_rows(reading: ListReading, table: pa.Table) -> list[dict[str, Any]]:
    names = table.column_names
    _, id_column, *_ = _wanted_columns(reading, names)
    columns = {"uri": table.column(URI_COLUMN).to_pylist()}
    if id_column:
        columns["__id__"] = table.column(id_column).to_pylist()
    for name, source in reading.fields.items():
        if source in names:
            columns[f"__field_{name}__"] = table.column(source).to_pylist()
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _all_text(data: bytes, delimiter: str) -> dict[str, pa.DataType]:
    """Every CSV column read as text (an id such as 007 stays 007)."""
    header = pacsv.read_csv(
        io.BytesIO(data.split(b"\n", 1)[0] + b"\n"), parse_options=pacsv.ParseOptions(delimiter=delimiter)
    ).column_names
    return dict.fromkeys(header, pa.string())


def _text_entries(data: bytes) -> Iterator[list[dict[str, Any]]]:
    """One entry per line; only `\n` ends a line (`str.splitlines` would also split at U+2028, U+0085, ...,
    which a key may hold)."""
    block: list[dict[str, Any]] = []
    for raw in data.decode("utf-8", "replace").split("\n"):
        line = raw.rstrip("\r").strip(" \t")
        if not line or line.startswith("#"):
            continue
        block.append({URI_COLUMN: line})
        if len(block) == ENTRIES_PER_BLOCK:
            yield block
            block = []
    if block:
        yield block


def _read_all(fs: Any, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _resolve(list_location: Location, entry: str | None, given_id: Any) -> tuple[str, str, str | None]:
    """(image id, URI to read, known error) of one entry."""
    entry = (entry or "").strip()
    image_id = str(given_id) if given_id is not None else public_uri(entry)
    scheme = urlsplit(entry).scheme
    if scheme and len(scheme) > 1:
        return image_id, entry, None
    if entry.startswith("/"):
        return image_id, entry, None
    if not entry or ".." in entry.split("/"):
        return (
            image_id or "(empty entry)",
            entry,
            f"{REASON_UNSAFE}: entry {entry!r} is not a path inside the list's folder",
        )
    folder = posixpath.dirname(list_location.path)
    return image_id, list_location.uri_of(posixpath.join(folder, entry)), None


def _text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else str(value)


def read_listed(batch: pa.Table, *, reading: ListReading) -> pa.Table:
    """Listing rows -> `(image_id, uri, data, error, <fields>)`, each URI on its own storage."""
    wanted, uris = [], []
    for target, error in zip(batch.column("path").to_pylist(), batch.column("error").to_pylist(), strict=True):
        if error is not None or not target:
            wanted.append((reading.location, "", error or f"{REASON_UNSAFE}: empty entry"))
            uris.append(public_uri(target or ""))
            continue
        try:
            location = Location.parse(target, reading.storage_options, what="listed image")
        except Exception as exc:  # a scheme nobody can read, a URI without a bucket
            wanted.append((reading.location, "", reading.redact(f"{REASON_UNSUPPORTED}: {exc}")))
            uris.append(public_uri(target))
            continue
        wanted.append((location, location.path, None))
        uris.append(location.uri)
    fetched = fetch_files(wanted, reading.redact, reading.retry, reading.max_image_bytes, hosts_per_entry=True)
    columns = {
        "image_id": batch.column("image_id"),
        "uri": pa.array(uris, pa.string()),
        "data": pa.array([data for data, _ in fetched], pa.large_binary()),
        "error": pa.array([error for _, error in fetched], pa.string()),
    }
    return pa.table({**columns, **{name: batch.column(name) for name in reading.fields}})
