"""The SFP forward on a batch of same-sized windows: SOF, similarity maps, SAE, HAI, head.

Function names follow docs/algorithm.md sections 2-6. All maps and statistics are
per window (the batch dimension is never reduced).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import SFPConfig
from .outliers import detect_outliers, mean_interpolate, purify_sequence
from .vit import ViTRunner

_AGG_EPS = 1e-6
_NORM_EPS = 1e-12


@dataclass
class WindowBatchOutput:
    """Per-window results: logits, outlier mask and scores, all on the patch grid (stitch.py takes the
    logits to the image's pixels)."""

    logits: torch.Tensor  # B x Q x rows x cols
    outliers: torch.Tensor  # B x n bool
    scores: torch.Tensor  # B x n float
    grid: tuple[int, int]


def similarity_map(patch_tokens: torch.Tensor, tau: float) -> torch.Tensor:
    """Cosine similarity `B x n x n` with entries below `tau` set to 0 (zero tokens stay 0)."""
    unit = patch_tokens / patch_tokens.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    sim = unit @ unit.transpose(-2, -1)
    return torch.where(sim < tau, torch.zeros_like(sim), sim)


def aggregate(values: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """agg(T, S) = (S / (rowsum(S) + 1e-6)) T."""
    return (sim / (sim.sum(dim=-1, keepdim=True) + _AGG_EPS)) @ values


def similarity_attention(sim: torch.Tensor) -> torch.Tensor:
    """softmax(M(S)) with M(S) = 3 (S - mean S), negatives masked, diagonal always kept."""
    biased = 3.0 * (sim - sim.mean(dim=(-2, -1), keepdim=True))
    eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
    biased = biased.masked_fill((biased < 0) & ~eye, float("-inf"))
    return torch.softmax(biased, dim=-1)


def semantic_aware_enhancer(
    runner: ViTRunner,
    purified: torch.Tensor,
    cls_token: torch.Tensor,
    s_pre: torch.Tensor,
    s_post: torch.Tensor,
    sim_attn: torch.Tensor,
    res_cls: float,
) -> torch.Tensor:
    """SAE (section 4): q-q, k-k and similarity attention in the last block, no residual or MLP."""
    block = runner.blocks[-1]
    tokens = aggregate(purified, s_pre)
    q, k, v = F.linear(block.ln_1(tokens), block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
    qh, kh, vh = runner.split_heads(q), runner.split_heads(k), runner.split_heads(v)
    self_attended = F.scaled_dot_product_attention(qh, qh, vh) + F.scaled_dot_product_attention(kh, kh, vh)
    mixed = (runner.merge_heads(self_attended) + sim_attn @ v) / 3.0
    tokens = block.attn.out_proj(mixed) + res_cls * cls_token
    return aggregate(tokens, s_post)


def hierarchical_integrator(
    runner: ViTRunner, fused: torch.Tensor, s_post: torch.Tensor, sim_attn: torch.Tensor, res_cls: float
) -> torch.Tensor:
    """HAI (section 5): similarity attention over the value projection of the fused blocks."""
    block = runner.blocks[-1]
    width = runner.width
    value = F.linear(
        block.ln_1(fused[:, 1:]), block.attn.in_proj_weight[2 * width :], block.attn.in_proj_bias[2 * width :]
    )
    tokens = block.attn.out_proj(sim_attn @ value) + res_cls * fused[:, :1]
    return aggregate(tokens, s_post)


def sfp_forward(
    runner: ViTRunner, pixels: torch.Tensor, text_features: torch.Tensor, config: SFPConfig
) -> WindowBatchOutput:
    """Run SFP on `B x 3 x H x W` normalised windows of one size; `config` has resolved blocks."""
    tokens, grid = runner.embed(pixels)
    detect_at = config.detect_block
    stream = set(config.purify_stream)
    want_weights = config.outlier_method == "som"
    fused = None
    outliers = scores = ref_tokens = aux_tokens = None
    for index in range(runner.depth - 1):
        block_no = index + 1
        needs_detection = block_no == detect_at or block_no in stream
        tokens, probs = runner.run_block(index, tokens, need_weights=want_weights and needs_detection)
        if needs_detection:
            found, found_scores = detect_outliers(config, tokens, probs)
            if block_no == detect_at:
                outliers, scores = found, found_scores
            if block_no in stream:
                tokens = purify_sequence(tokens, found, grid)
        if config.fuse_start <= block_no <= config.fuse_end:
            fused = tokens if fused is None else fused + tokens
        if block_no == config.ref_block:
            ref_tokens = tokens
        if block_no == config.aux_block:
            aux_tokens = tokens

    purified = mean_interpolate(tokens[:, 1:], outliers, grid)
    s_pre = similarity_map(mean_interpolate(ref_tokens[:, 1:], outliers, grid), config.tau)
    s_post = similarity_map(aux_tokens[:, 1:], config.tau)
    sim_attn = similarity_attention(s_pre)

    main = semantic_aware_enhancer(runner, purified, tokens[:, :1], s_pre, s_post, sim_attn, config.res_cls)
    cross = hierarchical_integrator(runner, fused, s_post, sim_attn, config.res_cls)

    visual = runner.visual
    features = visual.ln_post(main + cross) @ visual.proj
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    logits = features @ text_features.to(features.dtype).t()
    batch = logits.shape[0]
    logits = logits.transpose(1, 2).reshape(batch, -1, *grid)
    return WindowBatchOutput(logits=logits, outliers=outliers, scores=scores.float(), grid=grid)
