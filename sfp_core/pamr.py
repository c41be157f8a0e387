"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), optional in SFP."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_DILATIONS = (1, 2)
_OFFSETS = [(dy, dx) for dy in (0, 1, 2) for dx in (0, 1, 2)]
_NEIGHBOURS = [o for o in _OFFSETS if o != (1, 1)]


def _local_stack(x: torch.Tensor, offsets: list[tuple[int, int]]) -> torch.Tensor:
    """`B x K x P x H x W`: for each dilation and offset, the shifted map (replicate padding)."""
    height, width = x.shape[-2:]
    shifted = []
    for d in _DILATIONS:
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        for dy, dx in offsets:
            shifted.append(padded[..., dy * d : dy * d + height, dx * d : dx * d + width])
    return torch.stack(shifted, dim=2)


def pamr(image: torch.Tensor, logits: torch.Tensor, steps: int) -> torch.Tensor:
    """Refine `Q x H x W` logits with `steps` iterations of PAMR guided by the `3 x H x W` image."""
    img = image.unsqueeze(0).float()
    mask = logits.unsqueeze(0).float()
    spread = _local_stack(img, _OFFSETS).std(dim=2, keepdim=True)
    affinity = -(img.unsqueeze(2) - _local_stack(img, _NEIGHBOURS)).abs() / (1e-8 + 0.1 * spread)
    affinity = torch.softmax(affinity.mean(dim=1, keepdim=True), dim=2)
    for _ in range(steps):
        mask = (_local_stack(mask, _NEIGHBOURS) * affinity).sum(dim=2)
    return mask[0]
