"""Everything about what a run leaves behind: the layout, the rows, the manifests, and reading them back.

Other modules (and `jobs`) never spell a folder name, a status string or a
manifest key themselves; they ask this package (docs/design.md, "Output layout").
"""

from sfp_core import mask_dtype_for

from .layout import (
    LEASE_DIR,
    RUNS_DIR,
    STAGING_DIR,
    committed_file,
    data_file_name,
    data_files,
    is_hidden,
    is_hidden_path,
    lease_dir,
    lease_path,
    manifest_path,
    staged_file,
    staging_dir,
)
from .manifest import RUN_FAILED, RUN_RUNNING, RUN_SUCCEEDED, Manifest, RunSummary, iso, new_run_id, package_versions
from .reader import LabelledOutput, OutputError
from .rows import (
    DEFAULT_MAX_PIXELS,
    ERROR_CLASS_PERMANENT,
    ERROR_CLASS_TRANSIENT,
    OUTLIER_TYPE,
    REASON_CORRUPT,
    REASON_NOT_AN_IMAGE,
    REASON_TOO_LARGE,
    REASON_TRUNCATED,
    REASON_UNREADABLE,
    REASON_UNSUPPORTED,
    REASON_ZERO_BYTES,
    SCHEMA,
    STATUS_ERROR,
    STATUS_OK,
    UNREADABLE_NAME,
    UNREADABLE_NOT_REGULAR,
    error_class,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ERROR_CLASS_PERMANENT",
    "ERROR_CLASS_TRANSIENT",
    "LEASE_DIR",
    "OUTLIER_TYPE",
    "REASON_CORRUPT",
    "REASON_NOT_AN_IMAGE",
    "REASON_TOO_LARGE",
    "REASON_TRUNCATED",
    "REASON_UNREADABLE",
    "REASON_UNSUPPORTED",
    "REASON_ZERO_BYTES",
    "RUNS_DIR",
    "RUN_FAILED",
    "RUN_RUNNING",
    "RUN_SUCCEEDED",
    "SCHEMA",
    "STAGING_DIR",
    "STATUS_ERROR",
    "STATUS_OK",
    "UNREADABLE_NAME",
    "UNREADABLE_NOT_REGULAR",
    "LabelledOutput",
    "Manifest",
    "OutputError",
    "RunSummary",
    "committed_file",
    "data_file_name",
    "data_files",
    "error_class",
    "is_hidden",
    "is_hidden_path",
    "iso",
    "lease_dir",
    "lease_path",
    "manifest_path",
    "mask_dtype_for",
    "new_run_id",
    "package_versions",
    "staged_file",
    "staging_dir",
]
