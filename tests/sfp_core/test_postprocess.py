"""Post-processing on constructed probability maps."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT

from sfp_core import postprocess
from sfp_core.postprocess import (
    Thresholds,
    apply_area_threshold,
    below_threshold_to_background,
    class_probabilities,
    label_map,
)
from sfp_core.stitch import DenseLogits


def test_synonyms_take_the_max_over_their_names(rng):
    logits = torch.from_numpy(rng.normal(size=(6, 4, 5)).astype(np.float32))
    query_to_class = torch.tensor([0, 0, 0, 1, 2, 2])
    probs = class_probabilities(logits, 40.0, query_to_class, 3).numpy()
    names = torch.softmax(40.0 * logits, dim=0).numpy()
    for y in range(4):
        for x in range(5):
            assert probs[0, y, x] == names[0:3, y, x].max()
            assert probs[1, y, x] == names[3, y, x]
            assert probs[2, y, x] == names[4:6, y, x].max()


def test_single_name_classes_are_plain_softmax(rng):
    logits = torch.from_numpy(rng.normal(size=(3, 2, 2)).astype(np.float32))
    probs = class_probabilities(logits, 10.0, torch.arange(3), 3)
    torch.testing.assert_close(probs, torch.softmax(10.0 * logits, dim=0))


def _probs_from_labels(labels: np.ndarray, num_classes: int, high: float = 0.9) -> torch.Tensor:
    probs = np.full((num_classes, *labels.shape), (1 - high) / (num_classes - 1))
    for c in range(num_classes):
        probs[c][labels == c] = high
    return torch.from_numpy(probs)


def test_area_threshold_zeroes_small_non_background_classes():
    labels = np.zeros((10, 10), dtype=int)
    labels[:, :6] = 1  # 60 pixels
    labels[:3, 6:] = 2  # 12 pixels
    labels[9, 9] = 3  # 1 pixel; non-background total = 73
    probs = _probs_from_labels(labels, 4)
    out = apply_area_threshold(probs, probs.argmax(0), 0.1).numpy()
    # 60 > 7.3 and 12 > 7.3 survive, 1 does not; background is never touched
    np.testing.assert_array_equal(out[:3], probs[:3].numpy())
    assert (out[3] == 0).all()
    out = apply_area_threshold(probs, probs.argmax(0), 0.2).numpy()  # 12 is not above 14.6
    assert (out[2] == 0).all() and (out[1] == probs[1].numpy()).all()


def test_area_threshold_boundary_is_strict():
    labels = np.zeros((1, 10), dtype=int)
    labels[0, :5] = 1
    labels[0, 5:] = 2  # each is exactly 0.5 of the non-background pixels
    probs = _probs_from_labels(labels, 3)
    out = apply_area_threshold(probs, probs.argmax(0), 0.5).numpy()
    assert (out[1:] == 0).all()


def test_prob_threshold_sends_unsure_pixels_to_background():
    probs = torch.tensor([[[0.1, 0.3]], [[0.5, 0.34]], [[0.4, 0.36]]])
    confidence, argmax = probs.max(dim=0)
    assert below_threshold_to_background(argmax, confidence, 0.45).tolist() == [[1, 0]]
    assert below_threshold_to_background(argmax, confidence, 0.36).tolist() == [[1, 2]]  # strict "<"
    assert below_threshold_to_background(argmax, confidence, 0.0).tolist() == [[1, 2]]


@pytest.mark.parametrize("area_thd", [None, 0.2])
@pytest.mark.parametrize("keep_bytes", [0, postprocess.KEEP_BYTES])
def test_banded_label_map_equals_the_whole_image_computation(monkeypatch, area_thd, keep_bytes):
    """The label map built band by band (here 3 rows at a time; for the area threshold the bands'
    probabilities kept from the first pass or computed again) equals the formula on the whole image."""
    monkeypatch.setattr(postprocess, "KEEP_BYTES", keep_bytes)
    monkeypatch.setattr(postprocess, "BAND_BYTES", 3 * 4 * 6 * 41)  # 3 rows of 6 names x 41 columns
    logits = torch.randn(6, 11, 13, generator=torch.Generator().manual_seed(1))
    query_to_class = torch.tensor([0, 0, 1, 2, 2, 3])
    size = (29, 41)
    full = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    probs = class_probabilities(full, 30.0, query_to_class, 4)
    confidence, labels = probs.max(dim=0)
    if area_thd is not None:
        probs = apply_area_threshold(probs, labels, area_thd)
        confidence, labels = probs.max(dim=0)
    labels = below_threshold_to_background(labels, confidence, 0.4)
    banded = label_map(DenseLogits(full), query_to_class, 4, Thresholds(30.0, area_thd, 0.4), return_probs=True)
    torch.testing.assert_close(banded.probs, probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(banded.confidence, confidence, atol=1e-5, rtol=0)
    assert (banded.labels != labels).float().mean() < 1e-3  # equal up to ties at round-off


def test_a_large_image_with_a_large_vocabulary_stays_within_an_image_sized_budget(tmp_path):
    """6000 x 6000 with the VOC21 vocabulary (62 names): whole-image upsampling needed ~9 GB per copy."""
    script = textwrap.dedent(
        """
        import resource, sys
        import numpy as np
        from sfp_core import SFPConfig, SFPSegmenter, Vocabulary
        segmenter = SFPSegmenter.from_pretrained(
            "SFP-Tiny-16", "random", Vocabulary.from_file("jobs/vocab/voc21.txt"), SFPConfig.preset("voc21")
        )
        segmenter.segment([np.zeros((64, 64, 3), np.uint8)])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        image = np.random.default_rng(0).integers(0, 256, (6000, 6000, 3), dtype=np.uint8)
        result = segmenter.segment([image])[0]
        assert result.mask.shape == (6000, 6000)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((peak - before) / 1024)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    growth_mb = float(result.stdout.strip().splitlines()[-1])
    # The image (108 MB), its labels (int64, 288 MB), confidence (144 MB) and the uint8 mask: under 1.5 GB.
    assert growth_mb < 1536, f"segment grew the process by {growth_mb:.0f} MB"
