"""The pages of one Parquet column chunk, from their headers alone: how many rows each holds and how large it
becomes when decompressed, known before any page is decompressed.

A Parquet file's footer says how large a whole column chunk is uncompressed,
not how that is split: a few KiB of zstd can hold one page that decompresses
to GiBs. Readers (pyarrow included) decompress a page whole, so the only way
to bound a read by bytes is to look at each page's header first. Headers are
Thrift compact-protocol structs; this reads the few fields we need and skips
the rest (statistics, encodings), with every length checked against the bytes
at hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

MAX_HEADER_BYTES = 64 << 10  # a page header with page statistics of a long value; more is refused

# Thrift compact protocol type ids.
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)
# PageHeader fields we read, and the page-kind structs whose field 1 is the page's value count.
_UNCOMPRESSED_SIZE, _COMPRESSED_SIZE = 2, 3
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 5, 7, 8


class PageHeaderError(ValueError):
    """The bytes at a page offset are not a page header we can read."""


@dataclass(frozen=True)
class Page:
    """One page: a dictionary page (the distinct values) or a data page of `values` rows (flat columns)."""

    dictionary: bool
    values: int
    uncompressed: int
    compressed: int


def chunk_pages(read_at: Callable[[int, int], bytes], start: int, length: int) -> Iterator[Page]:
    """The pages of the column chunk at `[start, start + length)` of a file; `read_at(size, offset)` reads it."""
    offset, end = start, start + length
    while offset < end:
        head = read_at(min(MAX_HEADER_BYTES, end - offset), offset)
        page, header_size = _page_header(head, offset)
        yield page
        offset += header_size + page.compressed


def _page_header(data: bytes, offset: int) -> tuple[Page, int]:
    reader = _Compact(data, offset)
    fields = reader.struct(wanted={_UNCOMPRESSED_SIZE, _COMPRESSED_SIZE, _DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2})
    kind = next((k for k in (_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2) if k in fields), None)
    sizes = fields.get(_UNCOMPRESSED_SIZE), fields.get(_COMPRESSED_SIZE)
    if kind is None or not all(isinstance(s, int) and s >= 0 for s in sizes):
        raise PageHeaderError(f"the page at byte {offset} has no data or dictionary header we can read")
    values = fields[kind].get(1) if isinstance(fields[kind], dict) else None
    if not isinstance(values, int) or values < 0:
        raise PageHeaderError(f"the page at byte {offset} does not say how many values it holds")
    return Page(kind == _DICTIONARY_PAGE, values, sizes[0], sizes[1]), reader.position


class _Compact:
    """Just enough of Thrift's compact protocol to read a struct's integer fields and nested structs."""

    def __init__(self, data: bytes, offset: int):
        self.data, self.offset, self.position = data, offset, 0

    def _byte(self) -> int:
        if self.position >= len(self.data):
            raise PageHeaderError(
                f"the page header at byte {self.offset} is cut short or over {MAX_HEADER_BYTES} bytes"
            )
        value = self.data[self.position]
        self.position += 1
        return value

    def _varint(self) -> int:
        value = shift = 0
        while True:
            byte = self._byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise PageHeaderError(f"the page header at byte {self.offset} holds a malformed number")

    def _zigzag(self) -> int:
        value = self._varint()
        return (value >> 1) ^ -(value & 1)

    def struct(self, wanted: set[int] | None = None, depth: int = 0) -> dict[int, int | dict]:
        """Field id -> value for integer and struct fields (all of them, or those in `wanted`); others skipped."""
        if depth > 8:
            raise PageHeaderError(f"the page header at byte {self.offset} nests too deeply")
        fields: dict[int, int | dict] = {}
        field_id = 0
        while True:
            header = self._byte()
            kind = header & 0x0F
            if kind == _STOP:
                return fields
            delta = header >> 4
            field_id = field_id + delta if delta else self._zigzag()
            keep = wanted is None or field_id in wanted
            if kind in (_BYTE, _I16, _I32, _I64) and keep:
                fields[field_id] = self._zigzag() if kind != _BYTE else self._byte()
            elif kind == _STRUCT and keep:
                fields[field_id] = self.struct(None, depth + 1)
            else:
                self._skip(kind, depth)

    def _skip(self, kind: int, depth: int) -> None:
        if kind in (_TRUE, _FALSE):
            return
        if kind == _BYTE:
            self._byte()
        elif kind in (_I16, _I32, _I64):
            self._varint()
        elif kind == _DOUBLE:
            self._take(8)
        elif kind == _BINARY:
            self._take(self._varint())
        elif kind in (_LIST, _SET):
            header = self._byte()
            size = header >> 4 if header >> 4 != 15 else self._varint()
            for _ in range(size):
                self._skip(header & 0x0F, depth)
        elif kind == _MAP:
            size = self._varint()
            if size:
                types = self._byte()
                for _ in range(size):
                    self._skip(types >> 4, depth)
                    self._skip(types & 0x0F, depth)
        elif kind == _STRUCT:
            self.struct(set(), depth + 1)
        else:
            raise PageHeaderError(f"the page header at byte {self.offset} holds an unknown Thrift type {kind}")

    def _cut(self) -> PageHeaderError:
        return PageHeaderError(f"the page header at byte {self.offset} is cut short or over {MAX_HEADER_BYTES} bytes")

    def _take(self, size: int) -> None:
        if self.position + size > len(self.data):
            raise PageHeaderError(
                f"the page header at byte {self.offset} is cut short or over {MAX_HEADER_BYTES} bytes"
            )
        self.position += size
