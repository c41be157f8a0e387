"""Preflight for shard, table and list inputs: what their planning would trip on, found in seconds.

Each check reads at most a listing, one footer or one list header, and
raises a `UserError` naming the input and the fix: a pattern naming no
shard or table, a table without its image column (or with the wrong type),
a column named by `input.id_column` or `input.fields` that is not there, a
list without its `uri` column or without entries.
"""

from __future__ import annotations

import io
import itertools

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import InputHasNoImages, InputNotFound, InputUnusable
from ..request import Source
from ..retry import Retry
from ..storage import Location
from .patterns import FilePattern, matching_files
from .shards import SHARD_SUFFIXES
from .tables import TABLE_SUFFIXES
from .uris import URI_COLUMN, ListReading

_HEADER_BYTES = 1 << 16


def check_shards(source: Source, location: Location, retry: Retry) -> None:
    pattern = FilePattern.parse(source.uri)
    first = _first_file(source, pattern, location, SHARD_SUFFIXES, retry)
    if first is not None and "{" in pattern.pattern:
        fs = location.filesystem()
        name, path = first
        if retry.call(f"looking at {location.uri_of(path)}", lambda: fs.get_file_info(path)).type != pafs.FileType.File:
            raise InputNotFound(f"input {source.uri}: its first shard {name} does not exist; check input.uri")


def check_tables(source: Source, location: Location, retry: Retry) -> None:
    """The first table has the image column (bytes or an Image struct), and every column the request names."""
    first = _first_file(source, FilePattern.parse(source.uri), location, TABLE_SUFFIXES, retry)
    if first is None:
        return
    name, path = first
    fs = location.filesystem()
    schema = retry.call(f"reading {location.uri_of(path)}", lambda: pq.read_schema(path, filesystem=fs))
    where = f"input {source.uri} ({name})"
    column = source.image_column
    if column not in schema.names:
        raise InputUnusable(f"{where} has no column {column!r} (it has {_names(schema)}); set input.image_column")
    kind = schema.field(column).type
    is_struct_with_bytes = pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or is_struct_with_bytes):
        raise InputUnusable(f"{where}: column {column!r} is {kind}, not image bytes; set input.image_column")
    _check_named_columns(source, schema, where)


def check_list(source: Source, location: Location, retry: Retry) -> None:
    """The list is a file; a CSV or Parquet list has its `uri` column; a list has at least one entry."""
    fs = location.filesystem()
    info = retry.call(f"looking at {location.uri}", lambda: fs.get_file_info(location.path))
    if info.type != pafs.FileType.File:
        raise InputUnusable(f"input {source.uri} is not a file; a list input names a text, CSV or Parquet file")
    reading = ListReading(location)
    if reading.kind == "text":
        if source.allow_empty:
            return
        head = retry.call(f"reading {location.uri}", lambda: _head(fs, location.path)).decode("utf-8", "replace")
        if not any(line.strip() and not line.strip().startswith("#") for line in head.splitlines()):
            raise InputHasNoImages(f"input {source.uri} lists no URIs; set input.allow_empty: true if that is fine")
        return
    schema = retry.call(f"reading {location.uri}", lambda: _list_schema(reading, fs))
    where = f"input {source.uri}"
    if URI_COLUMN not in schema.names:
        raise InputUnusable(f"{where} has no {URI_COLUMN!r} column (it has {_names(schema)}); a list needs one")
    _check_named_columns(source, schema, where)


def _list_schema(reading: ListReading, fs: pafs.FileSystem) -> pa.Schema:
    path = reading.location.path
    if reading.kind == "parquet":
        return pq.read_schema(path, filesystem=fs)
    header = _head(fs, path).split(b"\n", 1)[0] + b"\n"
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    return pacsv.read_csv(io.BytesIO(header), parse_options=pacsv.ParseOptions(delimiter=delimiter)).schema


def _head(fs: pafs.FileSystem, path: str) -> bytes:
    """The first bytes of a list: enough for its header line, or to see whether it lists anything."""
    with fs.open_input_stream(path) as stream:
        return stream.read(_HEADER_BYTES)


def _check_named_columns(source: Source, schema: pa.Schema, where: str) -> None:
    if source.id_column is not None and source.id_column not in schema.names:
        raise InputUnusable(f"{where} has no column {source.id_column!r} (input.id_column; it has {_names(schema)})")
    missing = [f"{name}: {column}" for name, column in source.fields.items() if column not in schema.names]
    if missing:
        raise InputUnusable(f"{where} has no column for input.fields {', '.join(missing)} (it has {_names(schema)})")


def _first_file(
    source: Source, pattern: FilePattern, location: Location, suffixes: tuple[str, ...], retry: Retry
) -> tuple[str, str] | None:
    """The first file the input names; `InputHasNoImages` when there is none (unless `allow_empty`)."""
    fs = location.filesystem()
    if retry.call(f"looking at {location.uri}", lambda: fs.get_file_info(location.path)).type == pafs.FileType.NotFound:
        raise InputNotFound(f"input {location.uri} does not exist; check input.uri")
    first = next(iter(matching_files(pattern, location, suffixes, retry)), None)
    if first is None and not source.allow_empty:
        kind = "shards" if source.format == "webdataset" else "tables"
        named = f"matching {pattern.pattern}" if pattern.pattern else f"({', '.join(suffixes)})"
        raise InputHasNoImages(
            f"input {source.uri} names no {kind} {named} under {location.uri}; "
            "check input.uri, or set input.allow_empty: true"
        )
    return first


def _names(schema: pa.Schema) -> str:
    return ", ".join(itertools.islice(schema.names, 12)) + (", ..." if len(schema.names) > 12 else "")
