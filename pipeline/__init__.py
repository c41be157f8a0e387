"""pipeline: Ray Data from object storage to Parquet, every image exactly once (docs/design.md).

inputs -> decode -> predict -> encode -> sink, wired by `label(LabelRequest)`.
This module is the package's public face: `jobs` and Python users import
from here, never from the modules behind it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ForeignFilesInOutput,
    InputHasNoImages,
    InputNotFound,
    InputUnusable,
    LeaseHeld,
    LeaseLost,
    OutputLabelledDifferently,
    OutputNotADirectory,
    OutputNotWritable,
    OutputVanished,
    StorageAccessDenied,
    StorageUnavailable,
    UnsupportedStorage,
)
from .inputs.sources import read_source
from .lease import writing_job
from .output import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_ROWS_PER_FILE,
    RUN_FAILED,
    RUN_RUNNING,
    RUN_SUCCEEDED,
    SCHEMA,
    STATUS_ERROR,
    STATUS_OK,
    LabelIdentity,
    LabelledOutput,
    Manifest,
    OutputError,
    PointerDamaged,
    RunSummary,
    mask_dtype_for,
)
from .output.reader import LabelledImage, LegacyOutputLayout, read_labels
from .progress import Progress, RunDisplay
from .request import (
    DEFAULT_EXTENSIONS,
    Destination,
    LabelRequest,
    ModelChoice,
    RequestSection,
    Resources,
    Source,
)
from .resume import read_image_ids
from .secrets import ADVICE as SECRET_ADVICE
from .secrets import environment_secrets, find_secrets, is_secret_name
from .storage import fsspec_options, is_local_uri, path_of_uri

if TYPE_CHECKING:
    from .checks import preflight
    from .compact import Compaction, compact_output
    from .decode import ImageError, decode_image
    from .labelling import label
    from .ray_session import ensure_ray
    from .upgrade import upgrade_output

__all__ = [
    "DEFAULT_EXTENSIONS",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_ROWS_PER_FILE",
    "RUN_FAILED",
    "RUN_RUNNING",
    "RUN_SUCCEEDED",
    "SCHEMA",
    "SECRET_ADVICE",
    "STATUS_ERROR",
    "STATUS_OK",
    "Compaction",
    "Destination",
    "ForeignFilesInOutput",
    "ImageError",
    "InputHasNoImages",
    "InputNotFound",
    "InputUnusable",
    "LabelIdentity",
    "LabelRequest",
    "LabelledImage",
    "LabelledOutput",
    "LeaseHeld",
    "LeaseLost",
    "LegacyOutputLayout",
    "Manifest",
    "ModelChoice",
    "OutputError",
    "OutputLabelledDifferently",
    "OutputNotADirectory",
    "OutputNotWritable",
    "OutputVanished",
    "PointerDamaged",
    "Progress",
    "RequestSection",
    "Resources",
    "RunDisplay",
    "RunSummary",
    "Source",
    "StorageAccessDenied",
    "StorageUnavailable",
    "UnsupportedStorage",
    "compact_output",
    "decode_image",
    "ensure_ray",
    "environment_secrets",
    "find_secrets",
    "fsspec_options",
    "is_local_uri",
    "is_secret_name",
    "label",
    "mask_dtype_for",
    "path_of_uri",
    "preflight",
    "read_image_ids",
    "read_labels",
    "read_source",
    "upgrade_output",
    "writing_job",
]


def __getattr__(name: str) -> Any:
    """`label` (and with it torch and open_clip) loads on first use: Ray workers that only list, read or
    write files import this package too, and start seconds sooner without them."""
    if name == "label":
        from . import labelling

        return labelling.label
    if name == "ensure_ray":
        from . import ray_session

        return ray_session.ensure_ray
    if name == "preflight":
        from . import checks

        return checks.preflight
    if name in ("compact_output", "Compaction"):
        from . import compact

        return getattr(compact, name)
    if name == "upgrade_output":
        from . import upgrade

        return upgrade.upgrade_output
    if name in ("decode_image", "ImageError"):
        from . import decode

        return getattr(decode, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
