"""Decode (CPU tasks): bytes -> EXIF-oriented RGB pixels at SFP's working size, or an error row saying why.

Runs before the model so a GPU never waits on Pillow; what leaves this stage
is numpy pixels already resized by the run's `ImagePreparation` (the one the
predictor's segmenter checks them against), plus the original size the mask
must come back at.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from .arrays import tensor_column
from .output import (
    REASON_CORRUPT,
    REASON_NOT_AN_IMAGE,
    REASON_TOO_LARGE,
    REASON_TRUNCATED,
    REASON_UNSUPPORTED,
    REASON_ZERO_BYTES,
    STATUS_ERROR,
    STATUS_OK,
)
from .settings import DecodeSettings

_EMPTY = np.zeros((0, 0, 3), np.uint8)


class ImageError(Exception):
    """An input that yields no pixels: `reason` is one of output.REASON_*, `size` is (W, H) when known."""

    def __init__(self, reason: str, detail: str, size: tuple[int, int] | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.size = size


@contextlib.contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """Pillow's global decompression-bomb limit off: `decode_image` applies the run's own `max_pixels`."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Bytes -> `H x W x 3` uint8 RGB in display orientation; raises ImageError.

    The pixel limit is checked on the header, before any pixel is decoded.
    """
    if not data:
        raise ImageError(REASON_ZERO_BYTES, "the file is empty")
    with _own_pixel_limit():
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError(REASON_NOT_AN_IMAGE, f"no image format recognised in {len(data)} bytes") from None
        except Exception as exc:
            raise ImageError(REASON_NOT_AN_IMAGE, f"{type(exc).__name__}: {exc}") from None
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(REASON_TOO_LARGE, f"{width} x {height} pixels > {max_pixels}", (width, height))
        try:
            image.load()
        except (OSError, EOFError) as exc:
            reason = REASON_TRUNCATED if _is_truncation(exc) else REASON_CORRUPT
            raise ImageError(reason, f"{type(exc).__name__}: {exc}", (width, height)) from None
        except Exception as exc:  # Pillow's plugins raise SyntaxError, ValueError, zlib errors ...
            raise ImageError(REASON_CORRUPT, f"{type(exc).__name__}: {exc}", (width, height)) from None
        with contextlib.suppress(Exception):  # unreadable EXIF: the pixels are fine, keep them as stored
            image = ImageOps.exif_transpose(image)
        return to_rgb(image)


def _is_truncation(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, EOFError) or "truncated" in text or "broken data stream" in text


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> `H x W x 3` uint8: 16/32-bit grey keeps its top 8 bits, alpha is dropped."""
    mode = image.mode
    if mode == "RGB":
        return np.array(image)  # a writable copy: torch warns on read-only buffers
    if mode.startswith("I"):  # "I;16", "I;16B", "I;16L", "I" (16-bit PNG grey, integer TIFF)
        grey = (np.clip(np.asarray(image), 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise ImageError(REASON_UNSUPPORTED, "float pixels (mode F) have no standard 8-bit mapping", image.size)
    try:
        return np.array(image.convert("RGB"))
    except ValueError as exc:
        raise ImageError(REASON_UNSUPPORTED, f"mode {mode}: {exc}", image.size) from None


def decode_batch(batch: pa.Table, *, settings: DecodeSettings) -> pa.Table:
    """`(image_id, uri, data, error, <kept>)` -> `(image_id, uri, status, error, width, height, image, <kept>)`.

    `image` is the working-size pixels (empty for error rows); `width, height`
    the original size after EXIF orientation (null when unknown).
    """
    images: list[np.ndarray] = []
    statuses: list[str] = []
    errors: list[str | None] = batch.column("error").to_pylist()
    widths: list[int | None] = []
    heights: list[int | None] = []
    for i, data in enumerate(batch.column("data").to_pylist()):
        size = None
        if errors[i] is None:
            try:
                pixels = decode_image(data, settings.max_pixels)
                size = pixels.shape[1], pixels.shape[0]
                images.append(settings.preparation.apply(pixels))
            except ImageError as exc:
                errors[i], size = str(exc), exc.size
        if errors[i] is not None:
            images.append(_EMPTY)
        statuses.append(STATUS_OK if errors[i] is None else STATUS_ERROR)
        widths.append(size[0] if size else None)
        heights.append(size[1] if size else None)
    return pa.table(
        {
            "image_id": batch.column("image_id"),
            "uri": batch.column("uri"),
            "status": pa.array(statuses, pa.string()),
            "error": pa.array(errors, pa.string()),
            "width": pa.array(widths, pa.int32()),
            "height": pa.array(heights, pa.int32()),
            "image": tensor_column(images, np.uint8, 3),
            **{name: batch.column(name) for name in settings.kept},
        }
    )
