"""SOF, the selective outlier filter: detection (SOM, L2, LOF) and purification by mean interpolation.

`detect_outliers` picks the configured detector, `purify_sequence` replaces
the outlier tokens of a sequence (docs/algorithm.md, "SOF").

Every function takes a batch of windows and keeps each window's statistics to
itself: nothing is pooled across the batch dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import SFPConfig

_LOF_EPS = 1e-12


def detect_som(attn_probs: torch.Tensor, gamma: float, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention outlier mining on `B x heads x N x N` probabilities.

    Patch j is a candidate when gamma * A[0, 1+j] > A[1+j, 1+j] (head-averaged);
    the `top_k` candidates with the largest class score are the outliers.
    Returns (outlier mask `B x n`, class scores `B x n`).
    """
    class_score = (attn_probs[:, :, 0, 1:] * gamma).mean(dim=1)
    self_score = torch.diagonal(attn_probs[:, :, 1:, 1:], dim1=-2, dim2=-1).mean(dim=1)
    ranked = torch.where(class_score > self_score, class_score, torch.full_like(class_score, float("-inf")))
    return _top_k_mask(ranked, top_k), class_score


def detect_l2(patch_tokens: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `top_k` patch tokens (`B x n x C`) with the largest L2 norm."""
    norms = patch_tokens.float().norm(dim=-1)
    return _top_k_mask(norms, top_k), norms


def lof_scores(patch_tokens: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    """Local Outlier Factor per token, as the reference computes it (squared distances)."""
    x = patch_tokens.float()
    n = x.shape[1]
    k = min(n_neighbors, n - 1)
    if k < 1:
        return torch.ones(x.shape[:2], device=x.device)
    distances = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    knn_dist, knn_index = distances.topk(k + 1, dim=-1, largest=False)
    knn_dist, knn_index = knn_dist[..., 1:], knn_index[..., 1:]
    k_distance = knn_dist[..., -1:].expand_as(knn_dist)
    reach = torch.maximum(knn_dist, k_distance)
    density = k / reach.mean(dim=-1).clamp_min(_LOF_EPS)
    neighbour_density = torch.gather(density.unsqueeze(1).expand(-1, n, -1), 2, knn_index)
    return (neighbour_density / density.unsqueeze(-1)).mean(dim=-1)


def detect_lof(patch_tokens: torch.Tensor, n_neighbors: int, contamination: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens whose LOF is strictly above the `1 - contamination` quantile (not capped)."""
    scores = lof_scores(patch_tokens, n_neighbors)
    threshold = torch.quantile(scores, 1.0 - contamination, dim=1, keepdim=True)
    return scores > threshold, scores


def _top_k_mask(ranked: torch.Tensor, top_k: int) -> torch.Tensor:
    """Mask of the `top_k` largest finite entries per row (fewer where fewer are finite)."""
    k = min(top_k, ranked.shape[1])
    values, index = ranked.topk(k, dim=1)
    return torch.zeros_like(ranked, dtype=torch.bool).scatter(1, index, torch.isfinite(values))


def neighbour_sum(fmap: torch.Tensor) -> torch.Tensor:
    """Sum of the 8 neighbours of every cell of a `B x C x h x w` map (zeros outside)."""
    h, w = fmap.shape[-2:]
    padded = F.pad(fmap, (1, 1, 1, 1))
    total = torch.zeros_like(fmap)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy != 1 or dx != 1:
                total = total + padded[..., dy : dy + h, dx : dx + w]
    return total


def mean_interpolate(patch_tokens: torch.Tensor, outliers: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Replace each outlier token by the mean of its in-grid, non-outlier 8 neighbours.

    `patch_tokens` is `B x n x C`, `outliers` a `B x n` mask; an outlier with
    no valid neighbour becomes the zero vector; other tokens are untouched.
    """
    batch, n, channels = patch_tokens.shape
    rows, cols = grid
    fmap = patch_tokens.transpose(1, 2).reshape(batch, channels, rows, cols)
    is_outlier = outliers.view(batch, 1, rows, cols)
    keep = (~is_outlier).to(fmap.dtype)
    count = neighbour_sum(keep)
    mean = neighbour_sum(fmap * keep) / count.clamp_min(1.0)
    purified = torch.where(is_outlier, mean, fmap)
    return purified.reshape(batch, channels, n).transpose(1, 2)


def detect_outliers(
    config: SFPConfig, tokens: torch.Tensor, attn_probs: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SOF detection at one block: `tokens` is that block's output, `attn_probs` its attention."""
    patches = tokens[:, 1:]
    method = config.outlier_method
    if method == "som":
        return detect_som(attn_probs, config.res_cls * config.res_scale, config.top_k)
    if method == "l2":
        return detect_l2(patches, config.top_k)
    if method == "lof":
        return detect_lof(patches, config.lof_neighbors, config.lof_contamination)
    empty = torch.zeros(patches.shape[:2], dtype=torch.bool, device=tokens.device)
    return empty, torch.zeros(patches.shape[:2], device=tokens.device)


def purify_sequence(tokens: torch.Tensor, outliers: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Mean-interpolate the outlier patch tokens of a full `B x N x C` sequence."""
    return torch.cat([tokens[:, :1], mean_interpolate(tokens[:, 1:], outliers, grid)], dim=1)
