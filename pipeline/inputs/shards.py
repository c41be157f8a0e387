"""WebDataset input: tar shards whose members, grouped by key, are samples (docs/design.md, "Inputs").

Shards are named by a prefix (every `.tar`, `.tar.gz`, `.tgz` under it), a
glob (`s3://b/train/*.tar`, `**` crosses folders) or brace notation
(`s3://b/shards/{00000..01023}.tar`). Planning lists or expands the names in
a Ray task: the driver holds one row per shard, never per sample. Each
shard is then read front to back in its own task (`tarstream`), with
storage retries per chunk, so a dropped connection resumes where it was.

A sample is the run of consecutive members sharing a key (the member name
up to the first dot of its last component); its image is the first member
whose extension is in `input.extensions`, in that order. Its id is
`<shard name>/<key>`, the shard named relative to the folder the pattern
starts in; its `uri` is the shard's URI, `#`, and the image member's name.
Every sample gets a row: no image member, an unsafe member (a name leaving
the shard, a link or a device), a key seen earlier in the shard, all are
error rows. A shard that cannot be read, ends early or is damaged gets one
error row with the shard's name as id, after the rows of the samples
before the break.

Ray Data's `read_webdataset` was not used: it fails the whole read on a
truncated or damaged shard (no rows for the samples before it, no row
naming it), decodes members itself and drops samples it cannot group.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

import pyarrow as pa
import pyarrow.fs as pafs
import ray

from ..errors import StorageUnavailable
from ..output import (
    DEFAULT_MAX_IMAGE_BYTES,
    REASON_CORRUPT,
    REASON_DUPLICATE,
    REASON_NO_IMAGE,
    REASON_OVER_BYTE_LIMIT,
    REASON_TRUNCATED,
    REASON_UNREADABLE,
    REASON_UNSAFE,
    UNREADABLE_NAME,
)
from ..retry import Retry
from ..storage import Location, Redactor
from .ledger import record_unit
from .patterns import FilePattern, matching_files, name_blocks, planned_in_a_task
from .samples import KnownIds, SampleBatcher
from .tarstream import MAX_META_BYTES, MEMBER_DIRECTORY, MEMBER_FILE, Member, TarDamaged, TarTruncated, members

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
READ_CHUNK_BYTES = 8 << 20  # one ranged read (and one retry unit) of a shard


@dataclass(frozen=True)
class ShardReading:
    """What reading a shard needs: where shards are, which members are images, which fields to keep."""

    location: Location
    extensions: tuple[str, ...]
    fields: dict[str, str] = field(default_factory=dict)
    redact: Redactor = field(default_factory=Redactor)
    retry: Retry = field(default_factory=Retry)
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    @property
    def field_members(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Field name -> (member extension, JSON key path): `txt` -> ("txt", ()); `json.url` -> ("json", ("url",))."""
        out = {}
        for name, spec in self.fields.items():
            parts = spec.lower().split(".")
            json_at = max((i for i, p in enumerate(parts) if p == "json"), default=len(parts) - 1)
            out[name] = (".".join(parts[: json_at + 1]), tuple(spec.split(".")[json_at + 1 :]))
        return out


def plan_shards(pattern: FilePattern, location: Location, num_cpus: float, retry: Retry) -> ray.data.Dataset:
    """Rows `(unit, path, name)`, one per shard, listed or expanded in a Ray task."""
    return planned_in_a_task(_list_shards, num_cpus, pattern=pattern, location=location, retry=retry)


def _list_shards(pattern: FilePattern, location: Location, retry: Retry) -> Iterator[pa.Table]:
    yield from name_blocks(matching_files(pattern, location, SHARD_SUFFIXES, retry))


class _ChunkedReader:
    """`read(n)` over a random-access file, fetched in large ranged reads, each retried on its own."""

    def __init__(self, file: pafs.NativeFile, size: int, uri: str, retry: Retry):
        self.file, self.size, self.uri, self.retry = file, size, uri, retry
        self.position = 0
        self.buffer = b""
        self.used = 0  # bytes of `buffer` already returned (slicing the rest off each time would copy it)

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = self.size
        if self.used == len(self.buffer) and self.position < self.size:
            want = min(READ_CHUNK_BYTES, self.size - self.position)
            at = self.position
            self.buffer, self.used = self.retry.call(f"reading {self.uri}", lambda: self.file.read_at(want, at)), 0
            if not self.buffer:
                self.size = self.position  # the object shrank under us: it ends here
            self.position += len(self.buffer)
        out = self.buffer[self.used : self.used + size]
        self.used += len(out)
        return out


class _Sample:
    """Consecutive members sharing one key."""

    def __init__(self, key: str, first: Member):
        self.key, self.offset = key, first.offset
        self.members: list[tuple[str, Member]] = []


def _split_name(name: str) -> tuple[str, str] | None:
    """`dir/abc.seg.png` -> ("dir/abc", "seg.png"); None for a name without an extension."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot or not extension:
        return None
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def _unsafe(member: Member) -> str | None:
    if member.kind not in (MEMBER_FILE, MEMBER_DIRECTORY):
        return f"member {member.name!r} is a {member.kind}, not a file"
    if not member.name_is_utf8:
        return f"member {member.name!r}: {UNREADABLE_NAME}"
    if member.name.startswith("/") or ".." in member.name.split("/"):
        return f"member name {member.name!r} leaves the shard"
    return None


def read_shards(
    units: pa.Table, *, reading: ShardReading, known: KnownIds, ledger: ray.actor.ActorHandle
) -> Iterator[pa.Table]:
    """Shard rows -> sample rows (`samples.read_schema`); each shard reported to `ledger` when done."""
    for unit, path, name in zip(*(units.column(c).to_pylist() for c in ("unit", "path", "name")), strict=True):
        batcher = SampleBatcher(tuple(reading.fields), known)
        yield from shard_rows(reading, path, name, batcher)
        record_unit(ledger, unit, batcher.samples, batcher.emitted)


def shard_rows(reading: ShardReading, path: str, name: str, batcher: SampleBatcher) -> Iterator[pa.Table]:
    """One shard's sample rows, its last short block included."""
    yield from _ShardReader(reading, path, name, batcher).rows()
    yield from batcher.finish()


class _ShardReader:
    def __init__(self, reading: ShardReading, path: str, name: str, batcher: SampleBatcher):
        self.reading, self.path, self.name, self.batcher = reading, path, name, batcher
        self.uri = reading.location.uri_of(path)
        self.field_members = reading.field_members  # parsed once per shard, used for every sample
        self.wanted_extensions = set(reading.extensions) | {m for m, _ in self.field_members.values()}
        self.seen: set[str] = set()
        self.pending: _Sample | None = None  # the sample whose members are being gathered

    def rows(self) -> Iterator[pa.Table]:
        """The shard's samples in order; then, if it broke, one row for the rest; a shard without any sample
        gets one row too, so that every shard planned is seen in the output."""
        try:
            yield from self._samples()
        except StorageUnavailable:
            raise  # the run's problem, not the shard's
        except (TarTruncated, TarDamaged) as exc:
            reason = REASON_TRUNCATED if isinstance(exc, TarTruncated) else REASON_CORRUPT
            yield from self._broken_at(reason, exc)
        except EOFError as exc:  # gzip: the compressed stream ends early
            yield from self._broken(REASON_TRUNCATED, f"the compressed shard ends early ({exc})")
        except (gzip.BadGzipFile, zlib.error) as exc:
            yield from self._broken(REASON_CORRUPT, f"the compressed shard is damaged ({exc})")
        except Exception as exc:  # not found, permission: the shard's problem, retried by the next run
            yield from self._broken(REASON_UNREADABLE, f"{type(exc).__name__}: {exc}")
        if not self.batcher.samples:  # a 0-byte shard, or one that starts with the end-of-archive blocks
            yield from self._broken(REASON_NO_IMAGE, "the shard holds no samples (empty, or only an end marker)")

    def _samples(self) -> Iterator[pa.Table]:
        location, retry = self.reading.location, self.reading.retry
        fs = location.filesystem()
        with retry.call(f"opening {self.uri}", lambda: fs.open_input_file(self.path)) as file:
            stream = _ChunkedReader(file, file.size(), self.uri, retry)
            tar = gzip.GzipFile(fileobj=stream) if self.path.lower().endswith((".gz", ".tgz")) else stream
            yield from self._grouped(members(tar, self._wanted))

    def _grouped(self, entries: Iterator[Member]) -> Iterator[pa.Table]:
        """Consecutive members sharing a key, emitted as one sample each."""
        for member in entries:
            if member.kind == MEMBER_DIRECTORY:
                continue
            split = _split_name(member.name)
            if split is None and _unsafe(member) is None:
                continue  # a member without extension belongs to no sample (WebDataset skips it too)
            key = split[0] if split else member.name
            if self.pending is None or key != self.pending.key:
                if self.pending is not None:
                    yield from self._emit(self.pending)
                self.pending = _Sample(key, member)
            self.pending.members.append((split[1] if split else "", member))
        if self.pending is not None:
            yield from self._emit(self.pending)
            self.pending = None

    def _broken_at(self, reason: str, exc: TarTruncated | TarDamaged) -> Iterator[pa.Table]:
        """The sample being gathered is whole if the break came in an entry of another key; else it is lost
        with the rest, which then starts where it did."""
        start, pending = exc.offset, self.pending
        if pending is not None:
            split = _split_name(exc.name) if exc.name is not None else None
            if split is not None and split[0] != pending.key:
                yield from self._emit(pending)
            else:
                start = pending.offset
        yield from self._broken(reason, f"{exc}; the samples from byte {start} on were not read")

    def _wanted(self, name: str, size: int) -> bool:
        """Read a member's bytes only if its sample uses them and they fit the limits: an image up to
        `max_image_bytes`, a field's member up to `MAX_META_BYTES`, the first of each extension of a sample."""
        split = _split_name(name)
        if split is None or split[1] not in self.wanted_extensions:
            return False
        pending = self.pending
        if pending is not None and pending.key == split[0] and any(e == split[1] for e, _ in pending.members):
            return False  # a repeated member: the first one is the sample's
        limit = self.reading.max_image_bytes if split[1] in self.reading.extensions else MAX_META_BYTES
        return size <= limit

    def _emit(self, sample: _Sample) -> Iterator[pa.Table]:
        image_id = f"{self.name}/{sample.key}"
        duplicate = sample.key in self.seen
        self.seen.add(sample.key)
        if duplicate:  # an id of its own (the offset is stable) that no key can spell: a key's last part has
            image_id = f"{image_id}.{sample.offset}"  # no dot, so `<key>.<offset>` is never another sample's id
        image, error = self._image(sample, duplicate)
        data = image.data if image is not None and error is None else None
        uri = f"{self.uri}#{quote(image.name, safe='/')}" if image is not None else self.uri
        yield from self.batcher.add(image_id, uri, data, error and self.reading.redact(error), self._fields(sample))

    def _image(self, sample: _Sample, duplicate: bool) -> tuple[Member | None, str | None]:
        for _, member in sample.members:
            problem = _unsafe(member)
            if problem:
                return None, f"{REASON_UNSAFE}: {problem}"
        if duplicate:
            return None, f"{REASON_DUPLICATE}: key {sample.key!r} appears again at byte {sample.offset} of {self.name}"
        by_extension = _first_by_extension(sample)
        for extension in self.reading.extensions:
            member = by_extension.get(extension)
            if member is None:
                continue
            if member.data is None:  # the size limit kept it unread
                limit = self.reading.max_image_bytes
                return (
                    member,
                    f"{REASON_OVER_BYTE_LIMIT}: member {member.name!r} is {member.size} bytes (limit {limit})",
                )
            return member, None
        have = ", ".join(sorted(by_extension)) or "none"
        wanted = ", ".join(self.reading.extensions)
        detail = f"sample {sample.key!r} has no image member (members: {have}; input.extensions: {wanted})"
        return None, f"{REASON_NO_IMAGE}: {detail}"

    def _fields(self, sample: _Sample) -> list[str | None]:
        by_extension = _first_by_extension(sample)
        return [_field_value(by_extension.get(member), keys) for member, keys in self.field_members.values()]

    def _broken(self, reason: str, detail: str) -> Iterator[pa.Table]:
        message = self.reading.redact(f"{reason}: shard {self.name}: {detail}")
        yield from self.batcher.add(self.name, self.uri, None, message, [None] * len(self.reading.fields))


def _first_by_extension(sample: _Sample) -> dict[str, Member]:
    """Extension -> the sample's first member with it (only the first of a repeated one was read)."""
    first: dict[str, Member] = {}
    for extension, member in sample.members:
        first.setdefault(extension, member)
    return first


def _field_value(member: Member | None, keys: Sequence[str]) -> str | None:
    """The member's text, or the value at `keys` of its JSON (non-text values as JSON); None if absent."""
    if member is None or member.data is None or len(member.data) > MAX_META_BYTES:
        return None
    text = member.data.decode("utf-8", "replace")
    if not keys:
        return text
    try:
        value = json.loads(text)
        for key in keys:
            value = value[key]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return value if isinstance(value, str) else json.dumps(value)
