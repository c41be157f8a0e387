"""Parity with the authors' released code: golden vectors from a tiny random CLIP."""

from __future__ import annotations

import numpy as np
import pytest
from golden_cases import golden_config
from helpers import GOLDEN

from sfp_core import SFPSegmenter


def test_text_features_match_reference(tiny_segmenter):
    expected = np.load(GOLDEN / "text_features.npy")
    got = tiny_segmenter.text_features.cpu().numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("case_number", range(5))
def test_probabilities_and_outliers_match_reference(case_number, golden_index, tiny_backbone, golden_vocab):
    case = golden_index["cases"][case_number]
    config = golden_config(golden_index, case)
    segmenter = SFPSegmenter(tiny_backbone, golden_vocab, config)
    image = np.load(GOLDEN / case["image"])
    assert image.shape[:2] == (case["height"], case["width"])
    # The golden inputs are already at their segmentation size: the preparation leaves them as they are.
    result = segmenter.segment([image], original_sizes=[image.shape[:2]], return_probs=True)[0]

    expected_probs = np.load(GOLDEN / case["probs"])
    assert result.probs.shape == expected_probs.shape
    np.testing.assert_allclose(result.probs, expected_probs, atol=1e-4, rtol=0)

    expected = [{tuple(rc) for rc in window} for window in case["outliers_per_window"]]
    got = [set() for _ in expected]
    for outlier in result.outliers:
        got[outlier.window].add((outlier.row, outlier.col))
    assert got == expected
    assert result.stats.windows == len(expected)
