"""The CLIP ViT run block by block: fused attention everywhere, weights only on request.

The runner re-implements the attention of open_clip's `ResidualAttentionBlock`
from its `nn.MultiheadAttention` weights (pyproject pins open_clip below the
release that replaces it). A block with parts the runner does not compute is
refused rather than silently run without them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn


class ViTRunner:
    """Runs an open_clip `VisionTransformer` with access to every block's output."""

    def __init__(self, visual: nn.Module):
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if blocks is None or not hasattr(visual, "conv1") or getattr(visual, "attn_pool", None) is not None:
            raise ValueError(
                f"SFP needs a plain CLIP ViT image tower (conv patch embed, resblocks, class token); "
                f"got {type(visual).__name__}"
            )
        if not all(isinstance(b, ResidualAttentionBlock) for b in blocks):
            raise ValueError("SFP supports open_clip ResidualAttentionBlock towers only")
        for index, block in enumerate(blocks):
            _check_block(block, index)
        if getattr(visual, "pool_type", "tok") != "tok" or visual.positional_embedding.ndim != 2:
            raise ValueError("SFP needs a class-token ViT with a learned 2D positional embedding")
        self.visual = visual
        self.blocks: list[ResidualAttentionBlock] = list(blocks)
        self.depth = len(self.blocks)
        self.patch = int(visual.conv1.kernel_size[0])
        self.width = int(visual.conv1.out_channels)
        self.heads = int(self.blocks[0].attn.num_heads)
        self.grid = tuple(int(g) for g in visual.grid_size)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        self._widest = max(m.out_features for b in self.blocks for m in b.modules() if isinstance(m, nn.Linear))

    def positional_embedding(self, rows: int, cols: int) -> torch.Tensor:
        """Positional embedding for a `rows x cols` grid (docs/algorithm.md section 1, cached per grid)."""
        key = (rows, cols)
        cached = self._pos_cache.get(key)
        if cached is not None:
            return cached
        pos = self.visual.positional_embedding
        gh, gw = self.grid
        if (rows, cols) != (gh, gw):
            cls_pos, patch_pos = pos[:1], pos[1:]
            patch_pos = patch_pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
            patch_pos = F.interpolate(
                patch_pos.float(),
                scale_factor=((rows + 0.1) / gh, (cols + 0.1) / gw),
                mode="bicubic",
                align_corners=False,
            ).to(pos.dtype)
            if patch_pos.shape[-2:] != (rows, cols):
                raise RuntimeError(f"positional embedding resized to {tuple(patch_pos.shape[-2:])}, wanted {key}")
            patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(rows * cols, -1)
            pos = torch.cat([cls_pos, patch_pos], dim=0)
        self._pos_cache[key] = pos
        return pos

    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch-embed a `B x 3 x H x W` batch into `B x (1 + n) x C` tokens after `ln_pre`."""
        x = self.visual.conv1(pixels)
        rows, cols = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = self.visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding(rows, cols).to(x.dtype)
        return self.visual.ln_pre(x), (int(rows), int(cols))

    def activation_bytes(self, height: int, width: int) -> int:
        """Bytes (fp32) of the widest activation one window of `height x width` pixels makes: its tokens
        times the widest linear layer's output (the MLP's hidden layer in a CLIP ViT)."""
        tokens = 1 + (height // self.patch) * (width // self.patch)
        return 4 * tokens * self._widest

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.heads, -1).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, tokens, _ = x.shape
        return x.transpose(1, 2).reshape(batch, tokens, -1)

    def run_block(
        self, index: int, x: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One residual block (0-based `index`); attention probabilities only when asked."""
        block = self.blocks[index]
        attn = block.attn
        q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        probs = None
        if need_weights:
            scale = q.shape[-1] ** -0.5
            probs = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)
            out = probs @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = attn.out_proj(self.merge_heads(out))
        x = x + block.ls_1(out)
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return x, probs


# Block parts that change the attention and that `run_block` does not compute.
_UNSUPPORTED_BLOCK_PARTS = ("ln_1_kv", "ln_attn", "q_norm", "k_norm", "head_scale", "scale_attn", "attn_mask")


def _check_block(block: nn.Module, index: int) -> None:
    """Refuse a block whose attention holds more than a plain fused q/k/v projection and an output projection."""
    attn = block.attn
    problems = [f"has {name}" for name in _UNSUPPORTED_BLOCK_PARTS if getattr(block, name, None) is not None]
    if not isinstance(attn, nn.MultiheadAttention):
        problems.append(f"its attention is {type(attn).__name__}, not nn.MultiheadAttention")
    else:
        if attn.in_proj_weight is None:
            problems.append("its attention has separate q/k/v projections")
        if attn.bias_k is not None or attn.bias_v is not None or attn.add_zero_attn:
            problems.append("its attention adds key/value biases or a zero-attention slot")
    if problems:
        raise ValueError(
            f"SFP cannot run block {index} of this image tower: {'; '.join(problems)} "
            "(supported: open_clip ResidualAttentionBlock with nn.MultiheadAttention, open_clip < 4)"
        )
