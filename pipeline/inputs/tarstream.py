"""Reading a tar shard front to back as members, with every size bounded and every oddity named.

Python's `tarfile` reads a pax or GNU long-name header of any claimed size
into memory and gives no offset when a stream ends early; shards come from
strangers, so this reader parses the (simple) format itself: ustar headers
with their prefix field, pax `path`/`size` records, GNU long names, base-256
sizes, GNU and pax sparse entries (named, their data skipped) and
gzip-compressed shards. Metadata records over `MAX_META_BYTES` and a
damaged header end the shard with `TarDamaged`; a stream that ends inside a
header or a member ends it with `TarTruncated`; both carry the byte offset
(in the uncompressed tar) where reading stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

BLOCK = 512
MAX_META_BYTES = 1 << 20  # pax records and GNU long names: real ones are a few hundred bytes
_SKIP_CHUNK = 1 << 20

MEMBER_FILE = "file"
MEMBER_DIRECTORY = "directory"
MEMBER_SPARSE = "sparse file"
# Type flags that are neither data nor metadata, named for error messages.
_NO_DATA = frozenset({b"1", b"2", b"3", b"4", b"5", b"6"})  # entries whose size field is not followed by data
_OTHER_KINDS = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"6": "FIFO",
    b"S": MEMBER_SPARSE,
}
# An old-GNU sparse header says at this byte whether extension blocks (more of its map) follow it; each
# extension block says the same at `_EXTENSION_FLAG`.
_GNU_SPARSE_EXTENDED = 482
_EXTENSION_FLAG = 504
_PAX_SPARSE_PREFIX = "GNU.sparse."


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class TarProblem(Exception):
    """Reading stopped at `offset` (bytes into the tar) for the reason given."""

    def __init__(self, offset: int, detail: str, name: str | None = None):
        super().__init__(detail)
        self.offset = offset
        self.name = name  # the entry being read, when its header was whole


class TarTruncated(TarProblem):
    """The stream ended inside a header or a member."""


class TarDamaged(TarProblem):
    """A header that is not a tar header, or a metadata record over the limit."""


@dataclass(frozen=True)
class Member:
    """One entry: its name as stored, header offset, kind (`MEMBER_FILE`, `MEMBER_DIRECTORY` or what else it
    is), size, and its bytes when the caller wanted them (None otherwise)."""

    name: str
    offset: int
    kind: str
    size: int
    data: bytes | bytearray | None = None
    name_is_utf8: bool = True


class _Cursor:
    """A stream with the count of bytes consumed, reading exactly or saying where it ran out."""

    def __init__(self, stream: Readable):
        self.stream = stream
        self.offset = 0

    def exactly(self, size: int, started: int) -> bytearray:
        """`size` bytes, gathered into one buffer (never a list of pieces joined into a second copy)."""
        out = bytearray(size)
        filled = 0
        while filled < size:
            chunk = self.stream.read(min(size - filled, _SKIP_CHUNK))
            if not chunk:
                raise TarTruncated(started, f"the shard ends at byte {self.offset}, inside the entry at byte {started}")
            out[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
            self.offset += len(chunk)
        return out

    def pad(self, size: int) -> bool:
        """Consume the padding after an entry's data; False when the stream ends inside it."""
        read = len(self.stream.read(size)) if size else 0
        self.offset += read
        while read < size:
            chunk = self.stream.read(size - read)
            if not chunk:
                return False
            read += len(chunk)
            self.offset += len(chunk)
        return True

    def skip(self, size: int, started: int) -> None:
        while size:
            step = min(size, _SKIP_CHUNK)
            self.exactly(step, started)
            size -= step


def members(stream: Readable, wanted: Callable[[str, int], bool]) -> Iterator[Member]:
    """Every entry of the tar in `stream`, in order; the bytes of those `wanted(name, size)` accepts.

    Raises `TarTruncated` or `TarDamaged` where reading cannot go on; entries before that were yielded.
    """
    cursor = _Cursor(stream)
    pending_name: str | None = None  # from a GNU long-name entry or a pax record, for the next entry
    pending_size: int | None = None
    pending_sparse = False  # pax records of GNU's sparse formats 0.x / 1.0: the data starts with a map
    entry_start: int | None = None  # where the entry's first (metadata) header began
    while True:
        offset = cursor.offset
        if entry_start is None:
            entry_start = offset
        header = cursor.stream.read(BLOCK)
        if not header:
            return  # no end-of-archive blocks: the last entry was complete, which is all that matters
        cursor.offset += len(header)
        if not header.strip(b"\0"):
            return  # end of archive (its zero blocks, possibly cut short: every entry before them is whole)
        if len(header) < BLOCK:
            header += cursor.exactly(BLOCK - len(header), entry_start)
        kind_flag, raw_name, size = _parse_header(header, offset)
        if kind_flag in (b"L", b"K", b"x", b"g"):
            if size > MAX_META_BYTES:
                raise TarDamaged(
                    offset, f"a metadata entry at byte {offset} claims {size} bytes (limit {MAX_META_BYTES})"
                )
            record = bytes(cursor.exactly(_padded(size), entry_start)[:size])
            if kind_flag == b"L":
                pending_name = record.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind_flag == b"x":
                pax = _pax_records(record, offset)
                pending_name = pax.get(_PAX_SPARSE_PREFIX + "name", pax.get("path", pending_name))
                pending_sparse = pending_sparse or any(key.startswith(_PAX_SPARSE_PREFIX) for key in pax)
                if "size" in pax:
                    pending_size = _pax_size(pax["size"], offset)
            continue  # "K" (long link target) and "g" (global defaults) change nothing we read
        name = pending_name if pending_name is not None else raw_name
        size = pending_size if pending_size is not None else size
        offset, entry_start = entry_start, None
        pending_name = pending_size = None
        kind = MEMBER_SPARSE if pending_sparse else _kind(kind_flag)
        pending_sparse = False
        if kind_flag == b"S" and header[_GNU_SPARSE_EXTENDED]:
            _skip_sparse_extensions(cursor, offset)
        data = None
        data_size = 0 if kind_flag in _NO_DATA else size  # unknown types carry data, as POSIX says
        try:
            if kind == MEMBER_FILE and wanted(name, size):
                data = cursor.exactly(size, offset)
            else:
                cursor.skip(data_size, offset)
        except TarTruncated as exc:
            exc.name = name
            raise
        whole_padding = cursor.pad(_padded(data_size) - data_size)
        utf8 = _is_utf8(name)
        shown = name if utf8 else name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        yield Member(shown, offset, kind, size, data, utf8)
        if not whole_padding:  # the entry is whole, but what followed it is gone
            raise TarTruncated(cursor.offset, f"the shard ends at byte {cursor.offset}, in the padding after an entry")


def _skip_sparse_extensions(cursor: _Cursor, offset: int) -> None:
    """Consume the blocks that continue an old-GNU sparse map, so that the entry's data comes next."""
    for _ in range(MAX_META_BYTES // BLOCK):
        if not cursor.exactly(BLOCK, offset)[_EXTENSION_FLAG]:
            return
    raise TarDamaged(offset, f"the sparse entry at byte {offset} has a map over {MAX_META_BYTES} bytes")


def _parse_header(header: bytes, offset: int) -> tuple[bytes, str, int]:
    """(type flag, name, size) of a 512-byte header; `TarDamaged` when its checksum says it is not one."""
    stored = _octal(header[148:156])
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    signed = unsigned - 2 * sum(b for b in header[:148] + header[156:] if b > 127)
    if stored is None or stored not in (unsigned, signed):
        raise TarDamaged(offset, f"the block at byte {offset} is not a tar header (checksum mismatch)")
    size = _size(header[124:136], offset)
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    flag = header[156:157]
    return (b"0" if flag in (b"\0", b"7") else flag), name.decode("utf-8", "surrogateescape"), size


def _size(field: bytes, offset: int) -> int:
    if field[0] & 0x80:  # base-256 (GNU), for sizes of 8 GiB and more
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    value = _octal(field)
    if value is None:
        raise TarDamaged(offset, f"the header at byte {offset} has no valid size")
    return value


def _octal(field: bytes) -> int | None:
    text = field.replace(b"\0", b" ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return None


def _pax_records(record: bytes, offset: int) -> dict[str, str]:
    """`"<length> <key>=<value>\\n"` records -> {key: value}."""
    values: dict[str, str] = {}
    position = 0
    while position < len(record):
        space = record.find(b" ", position)
        try:
            length = int(record[position:space])
        except ValueError:
            if not record[position:].strip(b"\0"):
                break  # padding
            raise TarDamaged(offset, f"the pax header at byte {offset} is malformed") from None
        if length <= 0 or space < 0 or position + length > len(record):
            raise TarDamaged(offset, f"the pax header at byte {offset} is malformed")
        key, _, value = record[space + 1 : position + length - 1].partition(b"=")
        values[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += length
    return values


def _pax_size(text: str, offset: int) -> int:
    if not text.isdigit():
        raise TarDamaged(offset, f"the pax header at byte {offset} has an invalid size")
    return int(text)


def _kind(flag: bytes) -> str:
    if flag == b"0":
        return MEMBER_FILE
    if flag == b"5":
        return MEMBER_DIRECTORY
    return _OTHER_KINDS.get(flag, f"entry of tar type {flag!r}")


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes stand for bytes that were not UTF-8
        return False
    return True
