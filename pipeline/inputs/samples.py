"""What every input format's read stage emits: rows of `(image_id, uri, data, error, <kept fields>)`.

Formats whose samples are only known while reading (shards, table row
groups) skip the ids the output already has here, per row, and count what
they saw; `SampleBatcher` does both, so each format only says what a sample is.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import ray

READ_BATCH_ROWS = 16  # rows per block leaving a read task: small, so decoding spreads over many tasks
READ_BATCH_BYTES = 64 << 20  # ... and a block is cut sooner when its images reach this many bytes


def read_schema(kept_fields: Sequence[str]) -> pa.Schema:
    """The read stage's rows; `data` is null exactly when `error` says why there is no image."""
    base = [("image_id", pa.string()), ("uri", pa.string()), ("data", pa.large_binary()), ("error", pa.string())]
    return pa.schema([*base, *((name, pa.string()) for name in kept_fields)])


@functools.lru_cache(maxsize=2)
def _id_set(existing: ray.ObjectRef) -> frozenset[str]:
    """The output's ids as a set, built once per worker process and run (a run passes one object)."""
    return frozenset(ray.get(existing).to_pylist())


@dataclass(frozen=True)
class KnownIds:
    """The ids the output already holds (an object-store array), or none (overwrite runs)."""

    existing: ray.ObjectRef | None = None

    def __contains__(self, image_id: str) -> bool:
        return self.existing is not None and image_id in _id_set(self.existing)


@dataclass
class SampleBatcher:
    """Collects samples into blocks of `READ_BATCH_ROWS`, leaving out those `known` already has."""

    fields: tuple[str, ...]
    known: KnownIds
    block_rows: int = READ_BATCH_ROWS  # 1 for a probe, which stops at the first sample to label
    samples: int = 0  # every sample seen, skipped ones included
    emitted: int = 0
    _rows: list[tuple] = field(default_factory=list)
    _bytes: int = 0

    def add(
        self, image_id: str, uri: str, data: bytes | None, error: str | None, values: Sequence[str | None] = ()
    ) -> Iterator[pa.Table]:
        """Take one sample (`values` aligned with `fields`); yields a block when one is full."""
        self.samples += 1
        if image_id in self.known:
            return
        self.emitted += 1
        self._rows.append((image_id, uri, data, error, *(values or (None,) * len(self.fields))))
        self._bytes += len(data or b"")
        if len(self._rows) >= self.block_rows or self._bytes >= READ_BATCH_BYTES:
            yield self.flush()

    def finish(self) -> Iterator[pa.Table]:
        if self._rows:
            yield self.flush()

    def flush(self) -> pa.Table:
        columns = list(zip(*self._rows, strict=True))
        self._rows, self._bytes = [], 0
        schema = read_schema(self.fields)
        return pa.table([pa.array(column, f.type) for column, f in zip(columns, schema, strict=True)], schema=schema)
