"""sfp_core on a CUDA device: golden parity in fp32, and the fp16 / bf16 autocast paths. Skipped without a GPU.

Self-contained (no conftest or pipeline imports), so `bench/gpu_check.sh` runs it on a bare GPU machine
that has torch and open_clip but not Ray: `pytest --noconftest tests/sfp_core/test_cuda.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from golden_cases import golden_config

from sfp_core import SFPSegmenter, Vocabulary

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

GOLDEN = Path(__file__).parent.parent / "data" / "golden"


@pytest.fixture(scope="module")
def golden() -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False  # parity needs true fp32 matmuls
    torch.backends.cudnn.allow_tf32 = False
    return json.loads((GOLDEN / "index.json").read_text())


def segmenter(golden: dict, case: dict, precision: str = "fp32") -> SFPSegmenter:
    config = golden_config(golden, case, precision)
    vocabulary = Vocabulary.from_file(GOLDEN / "vocab.txt")
    return SFPSegmenter.from_pretrained("SFP-Tiny-16", str(GOLDEN / "tiny_openai_clip.pt"), vocabulary, config, "cuda")


@pytest.mark.parametrize("case_number", range(5))
def test_golden_probabilities_on_cuda_fp32(golden, case_number):
    case = golden["cases"][case_number]
    image = np.load(GOLDEN / case["image"])
    result = segmenter(golden, case).segment([image], original_sizes=[image.shape[:2]], return_probs=True)[0]
    np.testing.assert_allclose(result.probs, np.load(GOLDEN / case["probs"]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_on_cuda_agrees_with_fp32(golden, precision):
    for case in (c for c in golden["cases"] if c["outlier_method"] == "som"):
        image = np.load(GOLDEN / case["image"])
        sizes = [image.shape[:2]]
        want = segmenter(golden, case).segment([image], original_sizes=sizes)[0]
        got = segmenter(golden, case, precision).segment([image], original_sizes=sizes, return_probs=True)[0]
        assert np.isfinite(got.probs).all() and (got.mask == want.mask).mean() >= 0.99


def test_a_batch_on_cuda_equals_one_image_at_a_time(golden):
    case = next(c for c in golden["cases"] if c["outlier_method"] == "som")
    seg = segmenter(golden, case)
    images = [np.load(GOLDEN / c["image"]) for c in golden["cases"] if c["outlier_method"] == "som"]
    sizes = [image.shape[:2] for image in images]
    together = seg.segment(images, original_sizes=sizes)
    for image, size, batched in zip(images, sizes, together, strict=True):
        alone = seg.segment([image], original_sizes=[size])[0]
        assert (alone.mask == batched.mask).mean() >= 0.999
