"""The text side: one prompt-ensembled embedding per query name."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .templates import REFERENCE_TEMPLATES

_NAMES_PER_BATCH = 8


@torch.inference_mode()
def encode_names(
    model: torch.nn.Module,
    tokenizer,
    names: Sequence[str],
    device: torch.device,
    templates: Sequence[str] = REFERENCE_TEMPLATES,
) -> torch.Tensor:
    """`len(names) x D` embeddings: each template (the 80 ImageNet ones by default) filled with the
    name, encoded and L2-normalised, averaged per name, and normalised again (fp32)."""
    rows = []
    for start in range(0, len(names), _NAMES_PER_BATCH):
        chunk = names[start : start + _NAMES_PER_BATCH]
        tokens = tokenizer([template.replace("{}", name) for name in chunk for template in templates]).to(device)
        features = _encode_prompts(model, tokens).float()
        features = features / features.norm(dim=-1, keepdim=True)
        features = features.view(len(chunk), len(templates), -1).mean(dim=1)
        rows.append(features / features.norm(dim=-1, keepdim=True))
    return torch.cat(rows, dim=0)


def _encode_prompts(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text`, but only over the prompt positions that matter.

    CLIP's text tower is causal and pools the end-of-text token (the largest
    id), so positions after the longest prompt's end cannot change the result:
    running just those (a fraction of the 77-token context) gives the same
    embeddings several times faster. Other text towers run as they are.
    """
    mask = getattr(model, "attn_mask", None)
    if getattr(model, "text_pool_type", None) != "argmax" or mask is None or not hasattr(model, "token_embedding"):
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.ln_final(model.transformer(x, attn_mask=mask[:length, :length]))
    pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    return (
        model.text_projection(pooled)
        if isinstance(model.text_projection, torch.nn.Linear)
        else pooled @ model.text_projection
    )


class TextEmbeddingCache:
    """Embeddings per query name, so switching vocabularies encodes only new names."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        device: torch.device,
        templates: Sequence[str] = REFERENCE_TEMPLATES,
    ):
        self._model, self._tokenizer, self._device = model, tokenizer, device
        self._templates = tuple(templates)
        self._by_name: dict[str, torch.Tensor] = {}

    def features(self, names: Sequence[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(n for n in names if n not in self._by_name))
        if missing:
            encoded = encode_names(self._model, self._tokenizer, missing, self._device, self._templates)
            self._by_name.update(zip(missing, encoded, strict=True))
        return torch.stack([self._by_name[n] for n in names])
