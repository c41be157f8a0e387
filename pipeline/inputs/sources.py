"""One image back from a row's `uri`: a file, a member of a tar shard, or a row of a Parquet table.

The `uri` column names where an image came from, built by quoting, so a raw
`#` only ever marks a place inside a container: `<shard URI>#<member>` or
`<table URI>#row=<n>` (docs/design.md, "Inputs"). Tools that show the
source next to its mask (`sfp-label render`) read it through here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

from ..request import DEFAULT_IMAGE_COLUMN
from ..storage import path_of_uri
from .tables import image_bytes
from .tarstream import members

_ROW = "row="


def read_source(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The bytes of the image `uri` names; raises what the storage raises, or LookupError when the member
    or row is not there."""
    container, marked, place = uri.partition("#")
    location, path = path_of_uri(container, storage_options)
    fs = location.filesystem()
    if not marked:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    if place.startswith(_ROW):
        with fs.open_input_file(path) as file:
            return _table_row(pq.ParquetFile(file), int(place.removeprefix(_ROW)), uri)
    member = unquote(place)
    with fs.open_input_stream(path) as stream:
        wanted = (m for m in members(stream, lambda name, size: name == member) if m.data is not None)
        found = next(wanted, None)
    if found is None:
        raise LookupError(f"{uri}: the shard has no member {member!r}")
    return found.data or b""


def _table_row(table: pq.ParquetFile, row: int, uri: str) -> bytes:
    column = _image_column(table.schema_arrow)
    first = 0
    for group in range(table.num_row_groups):
        rows = table.metadata.row_group(group).num_rows
        if row < first + rows:
            value = table.read_row_group(group, columns=[column]).column(column)[row - first].as_py()
            data, error = image_bytes(value, column)
            if data is None:
                raise LookupError(f"{uri}: {error}")
            return data
        first += rows
    raise LookupError(f"{uri}: the table has {first} rows")


def _image_column(schema: pa.Schema) -> str:
    """`image` when the table has it, else its first column of bytes or of `{bytes, path}` structs."""
    if DEFAULT_IMAGE_COLUMN in schema.names:
        return DEFAULT_IMAGE_COLUMN
    for field in schema:
        kind = field.type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            return field.name
        if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
            return field.name
    raise LookupError("the table has no column of image bytes")
