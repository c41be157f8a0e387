"""From logits at the output size to class probabilities, thresholds and the label map
(docs/algorithm.md section 7).

Every query name's logits over a large image cost names x H x W floats (62
names at 6000 x 6000 is 9 GB), so `label_map` asks its logits for one band
of rows at a time (stitch.py makes any band alone) and memory grows with
H x W only (the label map and the confidence map), whatever the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

# One band's names x rows x W floats. Small bands keep every temporary under glibc's 32 MB threshold,
# above which each allocation is fresh zeroed pages from the kernel (a page fault per 4 KB).
BAND_BYTES = 8 << 20
# Up to this many bytes of classes x H x W floats, the area threshold's first pass keeps the bands'
# probabilities for the second; above it they are computed again, so memory stays image-sized.
KEEP_BYTES = 256 << 20


def class_probabilities(logits: torch.Tensor, logit_scale: float, query_to_class: torch.Tensor, num_classes: int):
    """softmax over query names (`Q x H x W`), then each class takes the max over its names."""
    probs = torch.softmax(logit_scale * logits.float(), dim=0)
    if probs.shape[0] == num_classes:
        return probs
    pooled = torch.zeros((num_classes, *probs.shape[1:]), dtype=probs.dtype, device=probs.device)
    index = query_to_class.view(-1, 1, 1).expand_as(probs)
    return pooled.scatter_reduce_(0, index, probs, "amax", include_self=False)


def area_keep(counts: torch.Tensor, area_thd: float) -> torch.Tensor:
    """For classes 1.. (background is always kept): whether their argmax area `counts[1:]` is above
    `area_thd` x all non-background argmax pixels."""
    foreground = counts[1:]
    return foreground > area_thd * foreground.sum()


def apply_area_threshold(probs: torch.Tensor, labels: torch.Tensor, area_thd: float) -> torch.Tensor:
    """Zero a non-background class whose argmax area (`labels` = argmax of `probs`) is not
    above `area_thd` x all non-background argmax pixels (class 0, background, is kept)."""
    keep = area_keep(torch.bincount(labels.flatten(), minlength=probs.shape[0]), area_thd).to(probs.dtype)
    probs = probs.clone()
    probs[1:] *= keep.view(-1, 1, 1)
    return probs


def below_threshold_to_background(labels: torch.Tensor, confidence: torch.Tensor, prob_thd: float) -> torch.Tensor:
    """Pixels whose max probability is below `prob_thd` get label 0 (background)."""
    return labels.masked_fill(confidence < prob_thd, 0) if prob_thd > 0 else labels


@dataclass
class LabelMap:
    labels: torch.Tensor  # H x W int64: the class of each pixel
    confidence: torch.Tensor  # H x W float32: its probability
    probs: torch.Tensor | None  # C x H x W, only when asked for


@dataclass(frozen=True)
class Thresholds:
    logit_scale: float
    area_thd: float | None
    prob_thd: float


class LogitRows(Protocol):
    """Logits at the output size that can be produced a band of rows at a time (see stitch.py)."""

    @property
    def names(self) -> int: ...

    @property
    def size(self) -> tuple[int, int]: ...

    def rows(self, start: int, stop: int) -> torch.Tensor: ...


def label_map(
    logits: LogitRows,
    query_to_class: torch.Tensor,
    num_classes: int,
    thresholds: Thresholds,
    return_probs: bool = False,
) -> LabelMap:
    """Labels and confidence from `names x H x W` logits, made one band of rows at a time."""
    height, width = logits.size
    rows = max(1, BAND_BYTES // (4 * max(logits.names, num_classes) * width))
    bands = [(start, min(start + rows, height)) for start in range(0, height, rows)]

    def band_probs(start: int, stop: int) -> torch.Tensor:
        return class_probabilities(logits.rows(start, stop), thresholds.logit_scale, query_to_class, num_classes)

    device = query_to_class.device
    keep, kept_bands = None, None
    if thresholds.area_thd is not None:  # a first pass counts each class's argmax area over the whole image
        counts = torch.zeros(num_classes, dtype=torch.long, device=device)
        kept_bands = [] if 4 * num_classes * height * width <= KEEP_BYTES else None
        for start, stop in bands:
            band = band_probs(start, stop)
            # max(dim=0).indices is argmax (the first maximum, NaN included) in a seventh of the time:
            # PyTorch's CPU argmax over a leading dimension takes a slow path (5.5 vs 0.8 ms per band)
            counts += torch.bincount(band.max(dim=0).indices.flatten(), minlength=num_classes)
            if kept_bands is not None:
                kept_bands.append(band)
        keep = area_keep(counts, thresholds.area_thd).to(torch.float32)
    labels = torch.empty((height, width), dtype=torch.long, device=device)
    confidence = torch.empty((height, width), dtype=torch.float32, device=device)
    probs = torch.empty((num_classes, height, width), device=device) if return_probs else None
    for index, (start, stop) in enumerate(bands):
        band = kept_bands[index] if kept_bands is not None else band_probs(start, stop)
        if keep is not None:
            band[1:] *= keep.view(-1, 1, 1)
        confidence[start:stop], labels[start:stop] = band.max(dim=0)
        if probs is not None:
            probs[:, start:stop] = band
    labels = below_threshold_to_background(labels, confidence, thresholds.prob_thd)
    return LabelMap(labels, confidence, probs)
