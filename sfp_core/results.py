"""What `SFPSegmenter.segment` returns per image."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Outlier:
    """One detected outlier patch.

    `window_y, window_x` is the window's origin in the working (resized) image,
    `row, col` the patch inside that window's grid, and `box` the patch's
    extent `(x0, y0, x1, y1)` in the original image's pixels.
    """

    window: int
    window_y: int
    window_x: int
    row: int
    col: int
    score: float
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class ImageStats:
    """Per-image summary: outliers over all windows, class areas, confidence."""

    windows: int
    patches: int
    outlier_count: int
    outlier_ratio: float
    score_min: float | None
    score_mean: float | None
    score_max: float | None
    class_pixels: dict[int, int]
    mean_confidence: float


@dataclass
class SegmentResult:
    """Mask at the original size (uint8, or uint16 above 255 classes) and its companions."""

    mask: np.ndarray
    confidence: np.ndarray  # H x W float32: the winning class's probability
    outliers: list[Outlier]
    stats: ImageStats
    working_size: tuple[int, int]
    probs: np.ndarray | None = field(default=None)  # C x H x W float32 when asked for
    # Q x H x W float32 when asked for: the query names' logits post-processing starts from (before PAMR)
    logits: np.ndarray | None = field(default=None)
