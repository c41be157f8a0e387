"""The actor (GPU or CPU): one SFP model per Ray actor, loaded once, mapping batches of decoded images.

torch and the model load in the actor, not at import: the driver imports this
module to hand Ray the class and never needs them (docs/design.md, "Layers").
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from sfp_core import SegmentResult

from .arrays import column_arrays, tensor_column
from .output import OUTLIER_TYPE, REASON_UNSUPPORTED, STATUS_ERROR, STATUS_OK
from .roster import join_roster
from .settings import PredictorSettings
from .storage import fsspec_options


class SFPPredictor:
    """Ray Data callable class: `__init__` loads the model, `__call__` maps one batch (Arrow in, Arrow out).

    Error rows from decoding pass through untouched; `ok` rows gain the mask
    (and the quantised confidence map) at their original size, plus statistics.
    """

    def __init__(self, settings: PredictorSettings, roster: ray.actor.ActorHandle | None = None):
        join_roster(roster)  # first: a run that ends while the model loads stops this actor too
        import torch

        from sfp_core import SFPSegmenter

        if settings.device == "cpu":  # Ray pins actors to one thread; a CPU actor gets its share of the node
            torch.set_num_threads(max(1, min(settings.threads, os.cpu_count() or 1)))
        model = settings.model
        self.segmenter = SFPSegmenter.from_pretrained(
            model.arch,
            model.weights,
            settings.vocabulary,
            settings.config,
            settings.device,
            storage_options=fsspec_options(model.weights, dict(model.storage_options)),
            sha256=model.weights_sha256,
        )
        if self.segmenter.preparation != settings.preparation:
            raise RuntimeError(
                f"the decode stage prepares images with {settings.preparation}, "
                f"the segmenter with {self.segmenter.preparation}"
            )
        self.confidence = settings.confidence
        self.mask_dtype = settings.vocabulary.mask_dtype
        self.kept = settings.kept

    def __call__(self, batch: pa.Table) -> pa.Table:
        statuses = batch.column("status").to_pylist()
        errors = batch.column("error").to_pylist()
        images = column_arrays(batch.column("image"))
        heights, widths = batch.column("height").to_pylist(), batch.column("width").to_pylist()
        ok = [i for i, status in enumerate(statuses) if status == STATUS_OK]
        results: list[SegmentResult | None] = [None] * len(statuses)
        segmented = self._segment([images[i] for i in ok], [(heights[i], widths[i]) for i in ok])
        for i, result in zip(ok, segmented, strict=True):
            if isinstance(result, str):
                statuses[i], errors[i] = STATUS_ERROR, result
            else:
                results[i] = result
        columns = {
            "image_id": batch.column("image_id"),
            "uri": batch.column("uri"),
            "status": pa.array(statuses, pa.string()),
            "error": pa.array(errors, pa.string()),
            "width": batch.column("width"),
            "height": batch.column("height"),
            **_result_columns(results, self.mask_dtype, self.confidence),
            **{name: batch.column(name) for name in self.kept},
        }
        return pa.table(columns)

    def _segment(self, images: list[np.ndarray], sizes: list[tuple[int, int]]) -> list[SegmentResult | str]:
        """The whole batch at once; one by one if it runs out of device memory (a single huge image)."""
        import torch  # already loaded by __init__

        if not images:
            return []
        try:
            return list(self.segmenter.segment(images, original_sizes=sizes))
        except torch.cuda.OutOfMemoryError:
            if len(images) == 1:
                height, width = images[0].shape[:2]
                return [f"{REASON_UNSUPPORTED}: out of device memory at working size {width} x {height}"]
            torch.cuda.empty_cache()
            return [r for image, size in zip(images, sizes, strict=True) for r in self._segment([image], [size])]


def _result_columns(results: list[SegmentResult | None], mask_dtype: type, confidence: bool) -> dict[str, pa.Array]:
    """Masks, confidence maps and statistics as columns; nulls (and empty masks) on error rows."""
    empty = np.zeros((0, 0), mask_dtype)
    stats = [r.stats if r else None for r in results]
    columns = {
        "mask": tensor_column([r.mask if r else empty for r in results], mask_dtype, 2),
        "class_ids": pa.array([sorted(s.class_pixels) if s else None for s in stats], pa.list_(pa.int32())),
        "class_pixels": pa.array(
            [[s.class_pixels[c] for c in sorted(s.class_pixels)] if s else None for s in stats], pa.list_(pa.int64())
        ),
        "mean_confidence": pa.array([s.mean_confidence if s else None for s in stats], pa.float32()),
        "outlier_count": pa.array([s.outlier_count if s else None for s in stats], pa.int32()),
        "outlier_ratio": pa.array([s.outlier_ratio if s else None for s in stats], pa.float32()),
        "score_min": pa.array([s.score_min if s else None for s in stats], pa.float32()),
        "score_mean": pa.array([s.score_mean if s else None for s in stats], pa.float32()),
        "score_max": pa.array([s.score_max if s else None for s in stats], pa.float32()),
        "windows": pa.array([s.windows if s else None for s in stats], pa.int32()),
        "outliers": pa.array([_outliers(r) if r else None for r in results], pa.list_(OUTLIER_TYPE)),
    }
    if confidence:
        quantised = [np.rint(r.confidence * 255).astype(np.uint8) if r else np.zeros((0, 0), np.uint8) for r in results]
        columns["confidence"] = tensor_column(quantised, np.uint8, 2)
    return columns


def _outliers(result: SegmentResult) -> list[dict[str, Any]]:
    return [
        {
            "window": o.window,
            "window_y": o.window_y,
            "window_x": o.window_x,
            "row": o.row,
            "col": o.col,
            "score": o.score,
            "x0": o.box[0],
            "y0": o.box[1],
            "x1": o.box[2],
            "y1": o.box[3],
        }
        for o in result.outliers
    ]
