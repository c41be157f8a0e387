"""The text side: prompt ensembles, and the shortened causal pass against open_clip's own."""

from __future__ import annotations

import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from sfp_core.text import _encode_prompts, encode_names


def test_shortened_pass_equals_full_context(tiny_backbone):
    prompts = ["a photo of a cat.", "a bad photo of a very long and unusual potted plant on a table.", "x"]
    tokens = tiny_backbone.tokenizer(prompts)
    with torch.inference_mode():
        full = tiny_backbone.model.encode_text(tokens)
        short = _encode_prompts(tiny_backbone.model, tokens)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)


def test_names_are_averaged_over_80_normalised_templates(tiny_backbone):
    names = ["red square", "blue stripe"]
    got = encode_names(tiny_backbone.model, tiny_backbone.tokenizer, names, torch.device("cpu"))
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    for row, name in zip(got, names, strict=True):
        with torch.inference_mode():
            each = tiny_backbone.model.encode_text(
                tiny_backbone.tokenizer([t(name) for t in OPENAI_IMAGENET_TEMPLATES])
            )
        each = each / each.norm(dim=-1, keepdim=True)
        mean = each.mean(dim=0)
        torch.testing.assert_close(row, mean / mean.norm(), atol=1e-5, rtol=1e-5)
