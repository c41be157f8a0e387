"""From averaged logits to class probabilities, thresholds and the label map (docs/algorithm.md section 7).

Upsampling every query name's logits to a large image at once costs
names x H x W floats (62 names at 6000 x 6000 is 9 GB). `label_map` upsamples
the whole map with `F.interpolate` when that fits in `WHOLE_BYTES` (most
photos: 62 names at 500 x 375 is 46 MB, and PyTorch's kernel is several times
faster than gathering rows), and otherwise works through the output in bands
of rows, each upsampled on its own with the same bilinear arithmetic, so
memory grows with H x W only (the label map and the confidence map), whatever
the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Working memory of one band of rows: names x band rows x W floats, a few times over.
BAND_BYTES = 32 << 20
# Up to this many bytes of names x H x W floats, the map is upsampled whole (one F.interpolate).
WHOLE_BYTES = 256 << 20


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


def _source_positions(in_size: int, out_size: int, start: int, stop: int, device: torch.device):
    """For output positions start..stop: the two source indices and their weights, as PyTorch's bilinear
    kernel computes them with align_corners=False (source = (dst + 0.5) * in / out - 0.5, floored at 0)."""
    scale = in_size / out_size
    dst = torch.arange(start, stop, device=device, dtype=torch.float32)
    src = ((dst + 0.5) * scale - 0.5).clamp_min(0)
    first = src.floor().long().clamp_max(in_size - 1)
    second = (first + 1).clamp_max(in_size - 1)
    weight = src - first.float()
    return first, second, 1.0 - weight, weight


def upsampled_rows(logits: torch.Tensor, size: tuple[int, int], start: int, stop: int) -> torch.Tensor:
    """Rows start..stop of the bilinear upsampling of `Q x h x w` logits to `size` (H, W), computed alone."""
    height, width = size
    in_h, in_w = logits.shape[1:]
    if (in_h, in_w) == (height, width):
        return logits[:, start:stop]
    r0, r1, rw0, rw1 = _source_positions(in_h, height, start, stop, logits.device)
    c0, c1, cw0, cw1 = _source_positions(in_w, width, 0, width, logits.device)
    band = logits[:, r0] * rw0.view(1, -1, 1) + logits[:, r1] * rw1.view(1, -1, 1)
    return band[:, :, c0] * cw0.view(1, 1, -1) + band[:, :, c1] * cw1.view(1, 1, -1)


def _upsampled_whole(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[1:]) == tuple(size):
        return logits
    return F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)[0]


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


def label_map(
    logits: torch.Tensor,
    size: tuple[int, int],
    query_to_class: torch.Tensor,
    num_classes: int,
    thresholds: Thresholds,
    return_probs: bool = False,
) -> LabelMap:
    """Labels and confidence at `size` from working-size `Q x h x w` logits, one band of rows at a time."""
    height, width = size
    names = max(logits.shape[0], num_classes)
    whole = 4 * names * height * width <= WHOLE_BYTES
    rows = height if whole else max(1, BAND_BYTES // (4 * names * width))
    bands = [(start, min(start + rows, height)) for start in range(0, height, rows)]
    upsampled = _upsampled_whole(logits, size) if whole else None

    def band_probs(start: int, stop: int) -> torch.Tensor:
        band = upsampled if upsampled is not None else upsampled_rows(logits, size, start, stop)
        return class_probabilities(band, thresholds.logit_scale, query_to_class, num_classes)

    keep = None
    if thresholds.area_thd is not None:  # a first pass counts each class's argmax area over the whole image
        counts = torch.zeros(num_classes, dtype=torch.long, device=logits.device)
        for start, stop in bands:
            counts += torch.bincount(band_probs(start, stop).argmax(dim=0).flatten(), minlength=num_classes)
        keep = area_keep(counts, thresholds.area_thd).to(torch.float32)
    labels = torch.empty(size, dtype=torch.long, device=logits.device)
    confidence = torch.empty(size, dtype=torch.float32, device=logits.device)
    probs = torch.empty((num_classes, *size), device=logits.device) if return_probs else None
    for start, stop in bands:
        band = band_probs(start, stop)
        if keep is not None:
            band[1:] *= keep.view(-1, 1, 1)
        confidence[start:stop], labels[start:stop] = band.max(dim=0)
        if probs is not None:
            probs[:, start:stop] = band
    labels = below_threshold_to_background(labels, confidence, thresholds.prob_thd)
    return LabelMap(labels, confidence, probs)
