"""Post-processing on constructed probability maps."""

from __future__ import annotations

import numpy as np
import torch

from sfp_core.postprocess import apply_area_threshold, below_threshold_to_background, class_probabilities


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
