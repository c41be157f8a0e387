"""The reduced-precision path, as close as CI gets to the GPU: SFP under CPU bf16 autocast.

`precision: fp16 | bf16` is for CUDA only; here the segmenter's autocast
dtype is switched in the test (not a user setting) so that every stage runs
with bf16 matmuls: outlier detection (SOM, LOF, L2), similarity maps,
SAE / HAI, PAMR and post-processing must take the mixed dtypes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import GOLDEN

from sfp_core import SFPConfig, SFPSegmenter


def segmenters(tiny_backbone, golden_vocab, **config):
    config = SFPConfig(short_side=224, **config)
    full = SFPSegmenter(tiny_backbone, golden_vocab, config)
    reduced = SFPSegmenter(tiny_backbone, golden_vocab, config)
    reduced._autocast_dtype = torch.bfloat16  # the test-only switch: autocast("cpu", bfloat16)
    return full, reduced


def golden_images(golden_index) -> list[np.ndarray]:
    return [np.load(GOLDEN / case["image"]) for case in golden_index["cases"] if case["outlier_method"] == "som"]


def test_bf16_autocast_runs_every_stage_and_agrees_with_fp32(tiny_backbone, golden_vocab, golden_index):
    full, reduced = segmenters(tiny_backbone, golden_vocab)
    images = golden_images(golden_index)
    for want, got in zip(
        full.segment(images, return_probs=True), reduced.segment(images, return_probs=True), strict=True
    ):
        assert got.probs.dtype == np.float32 and np.isfinite(got.probs).all()
        assert got.probs.min() >= 0.0 and got.probs.max() <= 1.0 + 1e-6
        assert np.isfinite(got.confidence).all() and got.mask.dtype == want.mask.dtype
        assert (got.mask == want.mask).mean() >= 0.99
        assert got.stats.outlier_count > 0


@pytest.mark.parametrize("options", [{"outlier_method": "lof"}, {"outlier_method": "l2"}, {"pamr_steps": 2}])
def test_bf16_autocast_other_detectors_and_pamr_take_the_mixed_dtypes(
    tiny_backbone, golden_vocab, golden_index, options
):
    _, reduced = segmenters(tiny_backbone, golden_vocab, **options)
    image = golden_images(golden_index)[0]
    (result,) = reduced.segment([image], return_probs=True)
    assert np.isfinite(result.probs).all() and result.mask.shape == image.shape[:2]
