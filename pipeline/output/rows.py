"""The Parquet rows: one per input image, written exactly once (docs/design.md, "Rows").

Statuses, error reasons and the pixel limit that turns an image into an
error row live here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

STATUS_OK = "ok"
STATUS_ERROR = "error"

# Images with more pixels get an error row (REASON_TOO_LARGE) before any pixel is decoded:
# Pillow's own decompression-bomb limit, 2 x 89.5 MP.
DEFAULT_MAX_PIXELS = 178_956_970
# An encoded image (a file, a shard member, a table cell) over this many bytes gets an error row
# (REASON_OVER_BYTE_LIMIT) before it is copied: inputs from strangers must not choose our memory use.
DEFAULT_MAX_IMAGE_BYTES = 64 << 20

# Why an image has no mask; every error row's `error` starts with one of these.
REASON_UNREADABLE = "unreadable"
REASON_NOT_AN_IMAGE = "not an image"
REASON_TRUNCATED = "truncated"  # the data ends early
REASON_CORRUPT = "corrupt"  # a known format whose pixel data fails to decode
REASON_ZERO_BYTES = "zero bytes"
REASON_TOO_LARGE = "over the pixel limit"
REASON_OVER_BYTE_LIMIT = "too large"  # the encoded image (or the Parquet page holding it) is over the byte limit
REASON_UNSUPPORTED = "unsupported"
REASON_NO_IMAGE = "no image"  # a shard sample without an image member, a table row without image bytes
REASON_UNSAFE = "unsafe entry"  # a tar member named outside its shard, or a link or device
REASON_DUPLICATE = "duplicate"  # a sample key seen earlier in the same shard
# Unreadable files that no retry will make readable (the listing finds these itself).
UNREADABLE_NAME = "the file name is not valid UTF-8"
UNREADABLE_NOT_REGULAR = "not a regular file (a FIFO or device)"

# Which error rows an incremental run labels again (`Destination.retry_errors`).
ERROR_CLASS_TRANSIENT = "transient"  # the file could not be read: gone, permission, storage
ERROR_CLASS_PERMANENT = "permanent"  # the bytes were read and are not a usable image


def error_class(error: str) -> str:
    """Transient (worth reading again later) or permanent, from the reason an error row starts with."""
    if error.startswith(f"{REASON_UNREADABLE}: ") and not error.startswith(
        (f"{REASON_UNREADABLE}: {UNREADABLE_NAME}", f"{REASON_UNREADABLE}: {UNREADABLE_NOT_REGULAR}")
    ):
        return ERROR_CLASS_TRANSIENT
    return ERROR_CLASS_PERMANENT


OUTLIER_TYPE = pa.struct(
    [
        ("window", pa.int32()),  # index in the image's sliding-window order
        ("window_y", pa.int32()),  # window origin in the working (resized) image
        ("window_x", pa.int32()),
        ("row", pa.int32()),  # patch position inside the window's grid
        ("col", pa.int32()),
        ("score", pa.float32()),
        ("x0", pa.int32()),  # the patch's box in the original image's pixels
        ("y0", pa.int32()),
        ("x1", pa.int32()),
        ("y1", pa.int32()),
    ]
)

SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),  # path relative to the input root, "/"-separated
        ("uri", pa.string()),  # full source URI, without credentials
        ("status", pa.string()),  # "ok" | "error"
        ("error", pa.string()),  # "<reason>: <detail>" on error rows
        ("width", pa.int32()),  # original size, after EXIF orientation
        ("height", pa.int32()),
        ("mask_png", pa.binary()),  # 8-bit PNG of class indices (16-bit above 255 classes)
        ("class_ids", pa.list_(pa.int32())),  # classes present in the mask, ascending
        ("class_pixels", pa.list_(pa.int64())),  # their areas, aligned with class_ids
        ("mean_confidence", pa.float32()),  # mean of the per-pixel max probability
        ("confidence_png", pa.binary()),  # max probability x 255 as an 8-bit PNG, when asked for
        ("outlier_count", pa.int32()),
        ("outlier_ratio", pa.float32()),  # outliers / patches over all windows
        ("score_min", pa.float32()),  # outlier scores; null without outliers
        ("score_mean", pa.float32()),
        ("score_max", pa.float32()),
        ("windows", pa.int32()),  # sliding windows the image took
        ("outliers", pa.list_(OUTLIER_TYPE)),
        ("model", pa.string()),  # "<arch>:<weights>"
        ("config_hash", pa.string()),  # SFPConfig.config_hash()
        ("run_id", pa.string()),
    ]
)


# Columns the stages pass between reading and encoding (the bytes read, the decoded image, the model's mask
# and confidence): a kept input field may not take one of these names either.
STAGE_COLUMNS = ("data", "image", "mask", "confidence")


def output_schema(kept_columns: Sequence[str] = ()) -> pa.Schema:
    """The rows' schema: `SCHEMA`, then the text columns a run keeps from its input (`Source.fields`)."""
    return pa.schema([*SCHEMA, *((name, pa.string()) for name in kept_columns)])
