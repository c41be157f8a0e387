"""Resume: which images the output already holds, so an incremental run labels only the rest."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray

from .output import current_files
from .retry import Retry
from .storage import Location


def existing_ids(output: Location, retry: Retry) -> pa.Array:
    """The `image_id` column of every committed data file (only that column is read)."""
    fs = output.filesystem()

    def read() -> pa.Array:
        files = current_files(output, retry)
        if not files:
            return pa.array([], pa.string())
        dataset = pads.dataset(files, filesystem=fs, format="parquet")
        return dataset.to_table(columns=["image_id"]).column("image_id").combine_chunks()

    return retry.call(f"reading the image ids of {output.uri}", read)


def read_image_ids(output_uri: str, storage_options: dict[str, Any] | None = None) -> set[str]:
    """The image ids already labelled under `output_uri` (what an incremental run skips)."""
    return set(existing_ids(Location.parse(output_uri, storage_options), Retry()).to_pylist())


def drop_existing(listing: pa.Table, *, existing: ray.ObjectRef) -> pa.Table:
    """Listing rows whose `image_id` is not in the output yet; `existing` is an object-store array, not a copy."""
    ids = ray.get(existing)
    if not len(ids):
        return listing
    return listing.filter(pc.invert(pc.is_in(listing.column("image_id"), value_set=ids)))
