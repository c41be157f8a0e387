"""pipeline: Ray Data from object storage to Parquet, every image exactly once (DESIGN.md).

source -> decode -> predict -> encode -> sink, wired by `run.label`.
"""

from .lock import OutputLocked
from .manifest import RunSummary
from .resume import read_image_ids
from .run import label
from .schema import SCHEMA

__all__ = ["SCHEMA", "OutputLocked", "RunSummary", "label", "read_image_ids"]
