"""Inputs: how each `input.format` is planned and read, behind one face (docs/design.md, "Inputs").

Two shapes. `files` and `list` plan one row per image (a folder's listing,
a list's entries): the run drops the ids already labelled, counts what is
left, and the read stage cuts it into read blocks before the stages start
(`read_blocks`). `webdataset` and `parquet` plan one row per unit (a shard,
a row group), whose images are only known while reading: the read stage
skips labelled ids itself and reports each finished unit to a ledger
(`ledger.py`), which is how the run proves it read every unit whole.
Either way the read stage emits `samples.read_schema` rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import ray

from ..request import Source
from ..retry import Retry
from ..storage import Location, Redactor
from .files import list_images, read_files
from .ledger import Tally, UnitLedger, start_ledger
from .patterns import FilePattern
from .samples import READ_BATCH_ROWS, KnownIds
from .shards import ShardReading, plan_shards, read_shards
from .tables import TableReading, plan_row_groups, read_row_groups
from .unlabelled import unlabelled_row_groups, unlabelled_shards
from .uris import ListReading, plan_list, read_listed

__all__ = ["UNIT_NAMES", "InputReader", "KnownIds", "Tally", "UnitLedger", "start_ledger"]

# What a unit of each unit-planned format is called where progress is shown.
UNIT_NAMES = {"webdataset": "shards", "parquet": "row groups"}
# Ray Data spends a few ms of the driver's time on every block it cuts, however small: a per-image plan is cut
# into at most this many read blocks (a few seconds), of `READ_BATCH_ROWS` rows or more for a longer list.
MAX_READ_BLOCKS = 1024


@dataclass(frozen=True)
class InputReader:
    """One run's input: where it is, its format's options, and how its storage calls redact and retry."""

    source: Source
    redact: Redactor
    retry: Retry

    @property
    def per_image_plan(self) -> bool:
        """True when the plan has a row per image (files, list); False for units read whole (shards, groups)."""
        return self.source.format in ("files", "list")

    @property
    def unit_name(self) -> str:
        return UNIT_NAMES.get(self.source.format, "")

    def location(self) -> Location:
        """Where the input starts: the folder, the list file, or the folder a shard pattern starts in."""
        uri = self.source.uri
        if self.source.format in ("webdataset", "parquet"):
            uri = FilePattern.parse(uri).base_uri
        return Location.parse(uri, dict(self.source.storage_options))

    def uri(self) -> str:
        """The input as recorded (manifests, summaries): an absolute URI without credentials, pattern kept."""
        pattern = FilePattern.parse(self.source.uri).pattern if self.source.format in ("webdataset", "parquet") else ""
        base = self.location().uri
        return f"{base}/{pattern}" if pattern else base

    def plan(self, num_cpus: float) -> ray.data.Dataset:
        """Rows with an `image_id` per image (per-image plans) or a `unit` per shard / row group."""
        source, location = self.source, self.location()
        if source.format == "files":
            return list_images(location, source.extensions, num_cpus, self.retry)
        if source.format == "list":
            return plan_list(self._list_reading(location), num_cpus)
        pattern = FilePattern.parse(source.uri)
        if source.format == "webdataset":
            return plan_shards(pattern, location, num_cpus, self.retry)
        return plan_row_groups(pattern, location, num_cpus, self.retry)

    def read(
        self,
        plan: ray.data.Dataset,
        known: KnownIds,
        ledger: ray.actor.ActorHandle | None,
        num_cpus: float,
        block_rows: int = READ_BATCH_ROWS,
    ) -> ray.data.Dataset:
        """The plan's rows -> `samples.read_schema` rows, in CPU tasks; `known` ids skipped (unit plans).

        A per-image plan is read in blocks of at most `block_rows` (one actor batch, for CPU actors) while the list
        is short."""
        source, location = self.source, self.location()
        cpu = {"batch_format": "pyarrow", "num_cpus": num_cpus}
        if self.per_image_plan:
            rows = min(block_rows, READ_BATCH_ROWS)
            small = read_blocks(plan, rows)
            if source.format == "files":
                reading = {
                    "location": location,
                    "redact": self.redact,
                    "retry": self.retry,
                    "max_bytes": source.max_image_bytes,
                }
                return small.map_batches(read_files, batch_size=rows, fn_kwargs=reading, **cpu)
            reading = {"reading": self._list_reading(location)}
            return small.map_batches(read_listed, batch_size=rows, fn_kwargs=reading, **cpu)
        read = read_shards if source.format == "webdataset" else read_row_groups
        return self._per_unit(read, plan, known, ledger, num_cpus)

    def unlabelled_units(
        self, plan: ray.data.Dataset, known: KnownIds, ledger: ray.actor.ActorHandle, num_cpus: float
    ) -> ray.data.Dataset:
        """A unit plan without the shards or row groups whose every sample is `known` (those are reported to
        the ledger as read), so that a run with nothing new starts no actor (`unlabelled.py`)."""
        probe = unlabelled_shards if self.source.format == "webdataset" else unlabelled_row_groups
        return self._per_unit(probe, plan, known, ledger, num_cpus)

    def _per_unit(
        self,
        work: Callable[..., pa.Table | Iterator[pa.Table]],
        plan: ray.data.Dataset,
        known: KnownIds,
        ledger: ray.actor.ActorHandle | None,
        num_cpus: float,
    ) -> ray.data.Dataset:
        """`work` run by one CPU task per shard or row group of a unit plan, with this input's reading."""
        units = plan.repartition(target_num_rows_per_block=1)
        kwargs = {"reading": self._unit_reading(), "known": known, "ledger": ledger}
        return units.map_batches(work, batch_size=1, batch_format="pyarrow", num_cpus=num_cpus, fn_kwargs=kwargs)

    def _unit_reading(self) -> ShardReading | TableReading:
        source, location = self.source, self.location()
        if source.format == "webdataset":
            return ShardReading(
                location, tuple(source.extensions), dict(source.fields), self.redact, self.retry, source.max_image_bytes
            )
        return TableReading(
            location,
            source.image_column,
            source.id_column,
            dict(source.fields),
            self.redact,
            self.retry,
            source.max_image_bytes,
        )

    def _list_reading(self, location: Location) -> ListReading:
        source = self.source
        options = dict(source.storage_options)
        return ListReading(
            location, source.id_column, dict(source.fields), options, self.redact, self.retry, source.max_image_bytes
        )


def read_blocks(plan: ray.data.Dataset, rows: int = READ_BATCH_ROWS) -> ray.data.Dataset:
    """A per-image plan cut into read blocks (one read task each) before the stages start, and held in the
    object store: `rows` rows a block, more when that would make over `MAX_READ_BLOCKS` blocks.

    Cut inside the running stages instead, the cutting task holds a whole CPU (Ray Data's repartition asks
    for one) for as long as the stages take to accept its blocks, a few a second: beside a one-CPU actor on
    a two-CPU node nothing else runs, and no row is read until the whole list is cut.
    """
    rows = max(rows, -(-plan.count() // MAX_READ_BLOCKS))
    return plan.repartition(target_num_rows_per_block=rows).materialize()
