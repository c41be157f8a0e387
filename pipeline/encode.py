"""Encode (CPU tasks, after the model): masks and confidence maps -> PNG bytes, rows -> the Parquet schema."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image

from .arrays import column_arrays
from .output import output_schema
from .settings import EncodeSettings

# zlib level 1: masks are flat regions and shrink nearly as well as at level 9, several times faster.
PNG_COMPRESS_LEVEL = 1


def encode_png(array: np.ndarray) -> bytes:
    """`H x W` uint8 -> 8-bit grey PNG; uint16 -> 16-bit grey PNG (masks over 255 classes)."""
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"cannot encode a {array.dtype} array of shape {array.shape} as a grey PNG")
    image = Image.fromarray(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def encode_batch(batch: pa.Table, *, settings: EncodeSettings) -> pa.Table:
    """Predictor rows -> rows of the output schema, with PNGs instead of arrays and the run's provenance."""
    rows = batch.num_rows
    schema = output_schema(settings.kept)
    columns = {name: batch.column(name) for name in batch.column_names if name in schema.names}
    columns["mask_png"] = _pngs(batch.column("mask"))
    columns["confidence_png"] = (
        _pngs(batch.column("confidence")) if "confidence" in batch.column_names else pa.nulls(rows, pa.binary())
    )
    columns["model"] = pa.array([settings.model] * rows, pa.string())
    columns["config_hash"] = pa.array([settings.config_hash] * rows, pa.string())
    columns["run_id"] = pa.array([settings.run_id] * rows, pa.string())
    return pa.table({field.name: columns[field.name] for field in schema}).cast(schema)


def _pngs(column: pa.ChunkedArray) -> pa.Array:
    """One PNG per non-empty array; error rows carry empty arrays and get null."""
    return pa.array([encode_png(a) if a.size else None for a in column_arrays(column)], pa.binary())
