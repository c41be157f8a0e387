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

from ..output import DEFAULT_MAX_IMAGE_BYTES, UNREADABLE_NOT_REGULAR
from ..request import DEFAULT_IMAGE_COLUMN
from ..storage import path_of_uri
from .files import is_regular, read_bounded
from .tables import MAX_PAGE_BYTES, image_bytes
from .tarstream import MEMBER_FILE, members

_ROW = "row="


def read_source(
    uri: str, storage_options: dict[str, Any] | None = None, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
) -> bytes:
    """The bytes of the image `uri` names; raises what the storage raises, or LookupError when the member
    or row is not there, or is no image we would read: a path that is not a regular file (a FIFO or
    `/dev/zero` named by an output written elsewhere) or an image over `max_bytes`."""
    container, marked, place = uri.partition("#")
    location, path = path_of_uri(container, storage_options)
    if not marked:
        data = read_bounded(location, path, max_bytes)
        if isinstance(data, str):
            raise LookupError(f"{uri}: {data}")
        return data
    if not is_regular(location, path):
        raise LookupError(f"{uri}: {UNREADABLE_NOT_REGULAR}")
    fs = location.filesystem()
    if place.startswith(_ROW):
        with fs.open_input_file(path) as file:
            return _table_row(pq.ParquetFile(file), int(place.removeprefix(_ROW)), uri, max_bytes)
    member = unquote(place)
    with fs.open_input_stream(path) as stream:
        named = members(stream, lambda name, size: name == member and size <= max_bytes)
        found = next((m for m in named if m.name == member), None)
    if found is None:
        raise LookupError(f"{uri}: the shard has no member {member!r}")
    if found.kind != MEMBER_FILE:
        raise LookupError(f"{uri}: the member is a {found.kind}, not a file")
    if found.data is None:
        raise LookupError(f"{uri}: the member holds {found.size} bytes (limit {max_bytes})")
    return bytes(found.data)


def _table_row(table: pq.ParquetFile, row: int, uri: str, max_bytes: int) -> bytes:
    column = _image_column(table.schema_arrow)
    first = 0
    for group in range(table.num_row_groups):
        rows = table.metadata.row_group(group).num_rows
        if row < first + rows:
            stored = _column_bytes(table.metadata.row_group(group), column)
            if stored > MAX_PAGE_BYTES:
                raise LookupError(f"{uri}: its row group stores {stored} bytes of images (limit {MAX_PAGE_BYTES})")
            value = table.read_row_group(group, columns=[column]).column(column)[row - first].as_py()
            data, error = image_bytes(value, column)
            if data is None:
                raise LookupError(f"{uri}: {error}")
            if len(data) > max_bytes:
                raise LookupError(f"{uri}: the image is {len(data)} bytes (limit {max_bytes})")
            return data
        first += rows
    raise LookupError(f"{uri}: the table has {first} rows")


def _column_bytes(group: pq.RowGroupMetaData, column: str) -> int:
    """The uncompressed bytes the group stores for `column` (its leaves, for a struct of bytes and path)."""
    chunks = (group.column(i) for i in range(group.num_columns))
    return sum(c.total_uncompressed_size for c in chunks if c.path_in_schema.split(".")[0] == column)


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
