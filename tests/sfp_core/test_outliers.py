"""SOF parts against independent, naive computations."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from sfp_core.outliers import detect_l2, detect_lof, detect_som, lof_scores, mean_interpolate


def naive_mean_interpolation(fmap: np.ndarray, outliers: set[tuple[int, int]]) -> np.ndarray:
    """Per-pixel loop straight from the spec: mean of in-grid, non-outlier 8-neighbours, else 0."""
    _, rows, cols = fmap.shape
    out = fmap.copy()
    for r, c in outliers:
        values = [
            fmap[:, r + dy, c + dx]
            for dy, dx in itertools.product((-1, 0, 1), repeat=2)
            if (dy, dx) != (0, 0) and 0 <= r + dy < rows and 0 <= c + dx < cols and (r + dy, c + dx) not in outliers
        ]
        out[:, r, c] = np.mean(values, axis=0) if values else 0.0
    return out


def _interpolate(fmap: np.ndarray, outliers: set[tuple[int, int]]) -> np.ndarray:
    channels, rows, cols = fmap.shape
    tokens = torch.from_numpy(fmap).reshape(channels, rows * cols).t().unsqueeze(0)
    mask = torch.zeros(1, rows * cols, dtype=torch.bool)
    for r, c in outliers:
        mask[0, r * cols + c] = True
    out = mean_interpolate(tokens, mask, (rows, cols))
    return out[0].t().reshape(channels, rows, cols).numpy()


def test_mean_interpolation_matches_naive_loop_on_hard_cases(rng):
    fmap = rng.normal(size=(5, 6, 7)).astype(np.float64)
    cases = [
        set(),
        {(0, 0)},  # corner: three neighbours
        {(0, 3), (5, 6)},  # borders
        {(2, 2), (2, 3), (3, 2)},  # adjacent outliers exclude each other
        {(1, 1), (0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)},  # a fully surrounded outlier
        {(r, c) for r in range(6) for c in range(7)},  # everything: all zero
    ]
    for outliers in cases:
        np.testing.assert_allclose(_interpolate(fmap, outliers), naive_mean_interpolation(fmap, outliers), atol=1e-12)


def test_mean_interpolation_random_masks_and_non_square_grids(rng):
    for rows, cols in [(1, 1), (1, 9), (4, 3), (14, 18)]:
        fmap = rng.normal(size=(3, rows, cols))
        outliers = {(r, c) for r in range(rows) for c in range(cols) if rng.random() < 0.3}
        np.testing.assert_allclose(_interpolate(fmap, outliers), naive_mean_interpolation(fmap, outliers), atol=1e-12)


def test_mean_interpolation_keeps_windows_apart():
    tokens = torch.arange(2 * 9 * 2, dtype=torch.float64).reshape(2, 9, 2)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 4] = True
    out = mean_interpolate(tokens, mask, (3, 3))
    assert torch.equal(out[1], tokens[1])
    np.testing.assert_allclose(out[0, 4].numpy(), tokens[0, [0, 1, 2, 3, 5, 6, 7, 8]].mean(0).numpy())


def _attention(class_to_patch: list[float], self_attention: list[float], heads: int = 2) -> torch.Tensor:
    n = len(class_to_patch)
    probs = torch.zeros(1, heads, n + 1, n + 1, dtype=torch.float64)
    probs[0, :, 0, 1:] = torch.tensor(class_to_patch, dtype=torch.float64)
    for j, value in enumerate(self_attention):
        probs[0, :, 1 + j, 1 + j] = value
    return probs


def test_som_candidates_and_top_k_on_hand_built_attention():
    gamma = 1.5
    class_to_patch = [0.10, 0.02, 0.30, 0.05, 0.20, 0.01]
    self_attention = [0.10, 0.50, 0.20, 0.01, 0.40, 0.00]
    # c = 1.5 * class: [0.15, 0.03, 0.45, 0.075, 0.30, 0.015]; candidates where c > self: 0, 2, 3, 5
    mask, scores = detect_som(_attention(class_to_patch, self_attention), gamma, top_k=2)
    assert set(np.flatnonzero(mask[0].numpy())) == {2, 0}
    np.testing.assert_allclose(scores[0].numpy(), np.array(class_to_patch) * gamma)
    mask, _ = detect_som(_attention(class_to_patch, self_attention), gamma, top_k=10)
    assert set(np.flatnonzero(mask[0].numpy())) == {0, 2, 3, 5}  # fewer candidates than top_k


def test_som_averages_heads():
    probs = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    probs[0, 0, 0, 1], probs[0, 1, 0, 1] = 0.8, 0.0  # mean class attention 0.4 -> c = 0.6
    probs[0, 0, 1, 1], probs[0, 1, 1, 1] = 0.1, 0.9  # mean self 0.5 -> candidate
    probs[0, 0, 0, 2], probs[0, 1, 0, 2] = 0.2, 0.2  # c = 0.3
    probs[0, 0, 2, 2], probs[0, 1, 2, 2] = 0.0, 0.7  # self 0.35 -> not a candidate
    mask, _ = detect_som(probs, 1.5, top_k=10)
    assert mask[0].tolist() == [True, False]


def test_l2_picks_largest_norms(rng):
    tokens = torch.from_numpy(rng.normal(size=(2, 30, 8)))
    mask, norms = detect_l2(tokens, top_k=4)
    for b in range(2):
        expected = set(np.argsort(-np.linalg.norm(tokens[b].numpy(), axis=1))[:4])
        assert set(np.flatnonzero(mask[b].numpy())) == expected
    np.testing.assert_allclose(norms.numpy(), np.linalg.norm(tokens.numpy(), axis=-1), rtol=1e-6)


def naive_lof(x: np.ndarray, k: int) -> np.ndarray:
    """The reference's LOF, written as a direct O(n^2) loop."""
    n = len(x)
    dist = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])
    neighbours, kdist = [], np.zeros(n)
    for i in range(n):
        order = sorted((j for j in range(n) if j != i), key=lambda j: dist[i, j])[:k]
        neighbours.append(order)
        kdist[i] = dist[i, order[-1]]
    lrd = np.array([k / np.mean([max(dist[i, o], kdist[i]) for o in neighbours[i]]) for i in range(n)])
    return np.array([np.mean([lrd[o] / lrd[i] for o in neighbours[i]]) for i in range(n)])


def test_lof_matches_direct_loop_and_closed_form(rng):
    x = rng.normal(size=(40, 5))
    x[7] += 6.0  # a clear outlier
    scores = lof_scores(torch.from_numpy(x).unsqueeze(0), n_neighbors=6)[0].numpy()
    expected = naive_lof(x, 6)
    np.testing.assert_allclose(scores, expected, rtol=1e-4)
    # The reach distance always equals kdist_i, so LOF reduces to mean kdist_i / kdist_o.
    dist = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    order = np.argsort(dist, axis=1)[:, :6]
    kdist = dist[np.arange(40), order[:, -1]]
    closed = np.array([np.mean(kdist[i] / kdist[order[i]]) for i in range(40)])
    np.testing.assert_allclose(scores, closed, rtol=1e-4)


def test_lof_threshold_is_strict_linear_quantile(rng):
    x = rng.normal(size=(1, 50, 4))
    mask, scores = detect_lof(torch.from_numpy(x), n_neighbors=8, contamination=0.1)
    values = scores[0].numpy()
    threshold = np.quantile(values, 0.9)  # numpy's default is linear interpolation too
    assert set(np.flatnonzero(mask[0].numpy())) == set(np.flatnonzero(values > threshold))


def test_lof_survives_tiny_grids_and_duplicate_tokens():
    x = torch.zeros(1, 4, 3)  # n - 1 < n_neighbors and all distances zero
    mask, scores = detect_lof(x, n_neighbors=30, contamination=0.05)
    assert torch.isfinite(scores).all()
    assert mask.shape == (1, 4)
