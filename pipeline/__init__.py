"""pipeline: Ray Data from object storage to Parquet, every image exactly once (DESIGN.md).

source -> decode -> predict -> encode -> sink, wired by `run.label`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .lease import LeaseHeld, LeaseLost
from .manifest import RunSummary
from .resume import read_image_ids
from .retry import StorageUnavailable
from .schema import SCHEMA

if TYPE_CHECKING:
    from .run import label

__all__ = ["SCHEMA", "LeaseHeld", "LeaseLost", "RunSummary", "StorageUnavailable", "label", "read_image_ids"]


def __getattr__(name: str) -> Any:
    """`label` (and with it torch and open_clip) loads on first use: Ray workers that only list,
    read or write files import this package too, and start seconds sooner without them."""
    if name == "label":
        from .run import label

        return label
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
