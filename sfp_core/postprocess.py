"""From averaged logits to class probabilities, thresholds and the label map (section 7)."""

from __future__ import annotations

import torch


def class_probabilities(logits: torch.Tensor, logit_scale: float, query_to_class: torch.Tensor, num_classes: int):
    """softmax over query names (`Q x H x W`), then each class takes the max over its names."""
    probs = torch.softmax(logit_scale * logits.float(), dim=0)
    if probs.shape[0] == num_classes:
        return probs
    pooled = torch.zeros((num_classes, *probs.shape[1:]), dtype=probs.dtype, device=probs.device)
    index = query_to_class.view(-1, 1, 1).expand_as(probs)
    return pooled.scatter_reduce_(0, index, probs, "amax", include_self=False)


def apply_area_threshold(probs: torch.Tensor, labels: torch.Tensor, area_thd: float) -> torch.Tensor:
    """Zero a non-background class whose argmax area (`labels` = argmax of `probs`) is not
    above `area_thd` x all non-background argmax pixels (class 0, background, is kept)."""
    counts = torch.bincount(labels.flatten(), minlength=probs.shape[0])[1:]
    keep = (counts > area_thd * counts.sum()).to(probs.dtype)
    probs = probs.clone()
    probs[1:] *= keep.view(-1, 1, 1)
    return probs


def below_threshold_to_background(labels: torch.Tensor, confidence: torch.Tensor, prob_thd: float) -> torch.Tensor:
    """Pixels whose max probability is below `prob_thd` get label 0 (background)."""
    return labels.masked_fill(confidence < prob_thd, 0) if prob_thd > 0 else labels
