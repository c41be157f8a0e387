"""Numpy arrays of varying shapes inside Arrow columns: how pixels and masks travel between stages."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from ray.data.extensions import ArrowVariableShapedTensorArray, ArrowVariableShapedTensorType


def tensor_column(arrays: Sequence[np.ndarray], dtype: np.dtype, ndim: int) -> pa.Array:
    """Ray's ragged-tensor column from same-dtype arrays (any number of them, any shapes)."""
    if not arrays:
        kind = ArrowVariableShapedTensorType(pa.from_numpy_dtype(dtype), ndim)
        return kind.wrap_array(pa.array([], kind.storage_type))
    return ArrowVariableShapedTensorArray.from_numpy([np.ascontiguousarray(a, dtype=dtype) for a in arrays])


def column_arrays(column: pa.ChunkedArray) -> list[np.ndarray]:
    """The numpy arrays held in a ragged-tensor column, in row order."""
    return [array for chunk in column.chunks for array in chunk.to_numpy(zero_copy_only=False)]
