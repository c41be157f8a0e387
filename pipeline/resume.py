"""Resume: which images the output already holds, so an incremental run labels only the rest."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from .output import LabelTable
from .retry import Retry
from .storage import Location


def read_image_ids(output_uri: str, storage_options: dict[str, Any] | None = None) -> set[str]:
    """The image ids already labelled under `output_uri` (what an incremental run skips)."""
    return set(LabelTable(Location.parse(output_uri, storage_options), Retry()).image_ids().to_pylist())


def drop_existing(listing: pa.Table, *, existing: ray.ObjectRef) -> pa.Table:
    """Listing rows whose `image_id` is not in the output yet; `existing` is an object-store array, not a copy."""
    ids = ray.get(existing)
    if not len(ids):
        return listing
    return listing.filter(pc.invert(pc.is_in(listing.column("image_id"), value_set=ids)))
