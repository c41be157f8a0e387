"""Which shards and row groups hold an image the output does not have yet, asked before any actor starts.

An incremental run over shards or tables learns a unit's ids only by reading
it, so without this a run with nothing new started the model (minutes on a
CPU) only for the read stage to skip every sample. Each unit is read here by
its format's own reader, the same way, up to its first sample still to label:
a new unit costs its first sample, a labelled one a full read, which the run
then never repeats (it is reported to the ledger as read and dropped).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pyarrow as pa
import ray

from .ledger import record_unit
from .samples import KnownIds, SampleBatcher
from .shards import ShardReading, shard_rows
from .tables import TableReading, group_rows

UnitRows = Callable[[dict, SampleBatcher], Iterator[pa.Table]]


def unlabelled_shards(
    units: pa.Table, *, reading: ShardReading, known: KnownIds, ledger: ray.actor.ActorHandle
) -> pa.Table:
    """The shards of `units` holding a sample to label; the others go to the ledger as read."""

    def rows_of(unit: dict, batcher: SampleBatcher) -> Iterator[pa.Table]:
        return shard_rows(reading, unit["path"], unit["name"], batcher)

    return _unlabelled(units, rows_of, tuple(reading.fields), known, ledger)


def unlabelled_row_groups(
    units: pa.Table, *, reading: TableReading, known: KnownIds, ledger: ray.actor.ActorHandle
) -> pa.Table:
    """The row groups of `units` holding a row to label; the others go to the ledger as read."""
    return _unlabelled(units, functools.partial(group_rows, reading), tuple(reading.fields), known, ledger)


def _unlabelled(
    units: pa.Table, rows_of: UnitRows, fields: tuple[str, ...], known: KnownIds, ledger: ray.actor.ActorHandle
) -> pa.Table:
    kept = []
    for index, unit in enumerate(units.to_pylist()):
        probe = SampleBatcher(fields, known, block_rows=1)  # a block as soon as one sample is to be labelled
        rows = rows_of(unit, probe)
        try:
            found = next(rows, None) is not None
        finally:
            rows.close()  # stops reading the unit
        if found:
            kept.append(index)
        else:
            record_unit(ledger, unit["unit"], probe.samples, 0)
    return units.take(pa.array(kept, pa.int64()))
