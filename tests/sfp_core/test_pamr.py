"""PAMR against a per-pixel loop of the published algorithm."""

from __future__ import annotations

import numpy as np
import torch

from sfp_core.pamr import pamr

NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
ALL = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def naive_pamr(image: np.ndarray, logits: np.ndarray, steps: int, dilations=(1, 2)) -> np.ndarray:
    _, height, width = image.shape

    def at(arr, y, x):
        return arr[:, min(max(y, 0), height - 1), min(max(x, 0), width - 1)]  # replicate padding

    weights = np.zeros((height, width, len(dilations) * 8))
    for y in range(height):
        for x in range(width):
            patch = np.stack([at(image, y + dy * d, x + dx * d) for d in dilations for dy, dx in ALL], axis=1)
            std = patch.std(axis=1, ddof=1)
            aff = [
                -np.abs(image[:, y, x] - at(image, y + dy * d, x + dx * d)) / (1e-8 + 0.1 * std)
                for d in dilations
                for dy, dx in NEIGHBOURS
            ]
            aff = np.mean(aff, axis=1)
            aff = np.exp(aff - aff.max())
            weights[y, x] = aff / aff.sum()
    mask = logits.copy()
    for _ in range(steps):
        new = np.zeros_like(mask)
        for y in range(height):
            for x in range(width):
                neighbours = [at(mask, y + dy * d, x + dx * d) for d in dilations for dy, dx in NEIGHBOURS]
                new[:, y, x] = sum(w * n for w, n in zip(weights[y, x], neighbours, strict=True))
        mask = new
    return mask


def test_pamr_matches_per_pixel_loop():
    rng = np.random.default_rng(5)
    image = rng.normal(size=(3, 6, 7))
    logits = rng.normal(size=(4, 6, 7))
    got = pamr(torch.from_numpy(image), torch.from_numpy(logits), steps=3).numpy()
    np.testing.assert_allclose(got, naive_pamr(image, logits, 3), rtol=1e-4, atol=1e-5)
