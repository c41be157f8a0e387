"""Stitching window logits with two matrices against the reference's steps done one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sfp_core.stitch import LogitGrid, axis_operator, bilinear_matrix
from sfp_core.windows import WindowLayout

PATCH = 16


def interpolate(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x[None].double(), size=size, mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize(
    ("source", "target"), [((7, 9), (50, 33)), ((50, 33), (7, 9)), ((16, 16), (16, 16)), ((5, 40), (123, 1))]
)
def test_bilinear_matrices_equal_pytorchs_interpolation(source, target):
    x = torch.randn(3, *source, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    by_matrices = bilinear_matrix(source[0], target[0]) @ x @ bilinear_matrix(source[1], target[1]).t()
    torch.testing.assert_close(by_matrices, interpolate(x, target), atol=1e-12, rtol=0)


def reference_stitch(layout: WindowLayout, logits: dict, original: tuple[int, int]) -> torch.Tensor:
    """The reference's order: each window upsampled to its pixels, summed, divided by a per-pixel count
    made by brute force, then the average upsampled to the original size."""
    names = next(iter(logits.values())).shape[0]
    total = torch.zeros(names, layout.height, layout.width, dtype=torch.float64)
    count = torch.zeros(layout.height, layout.width, dtype=torch.float64)
    for r, c, y1, x1, y2, x2 in layout.windows():
        total[:, y1:y2, x1:x2] += interpolate(logits[(r, c)], (y2 - y1, x2 - x1))
        count[y1:y2, x1:x2] += 1
    return interpolate(total / count, original)


@pytest.mark.parametrize(
    ("working", "original", "crop"),
    [
        ((336, 448), (375, 500), 224),  # a VOC photo: 2 x 3 windows, upsampled to its size
        ((336, 336), (336, 336), 224),  # no final resize
        ((160, 200), (80, 100), 224),  # smaller than the crop along both axes, downsampled at the end
        ((230, 700), (230, 700), 224),  # last windows shifted back; a side that is not a patch multiple
        ((333, 517), (400, 600), 0),  # one window of the whole image
    ],
)
def test_stitched_logits_equal_the_reference_steps(working, original, crop):
    layout = WindowLayout.of(*working, crop, 112)
    generator = torch.Generator().manual_seed(1)
    logits = {
        (r, c): torch.randn(5, (y2 - y1) // PATCH, (x2 - x1) // PATCH, generator=generator)
        for r, c, y1, x1, y2, x2 in layout.windows()
    }
    grid = LogitGrid(layout, PATCH, 5, original, torch.device("cpu"))
    for (r, c), window in reversed(logits.items()):  # any order
        grid.place(r, c, window)
    stitched = grid.stitched()
    expected = reference_stitch(layout, {k: v.double() for k, v in logits.items()}, original)
    assert stitched.size == original and stitched.names == 5
    whole = stitched.rows(0, original[0])
    assert whole.dtype == torch.float32
    torch.testing.assert_close(whole.double(), expected, atol=2e-6, rtol=0)
    for start, stop in [(0, 1), (original[0] // 3, original[0] // 2), (original[0] - 1, original[0])]:
        torch.testing.assert_close(stitched.rows(start, stop), whole[:, start:stop], atol=1e-6, rtol=0)


def test_a_window_of_the_wrong_grid_is_refused():
    grid = LogitGrid(WindowLayout.of(336, 448, 224, 112), PATCH, 2, (336, 448), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"window \(1, 2\) has a \(14, 13\) patch grid, expected \(14, 14\)"):
        grid.place(1, 2, torch.zeros(2, 14, 13))


def test_the_axis_operator_averages_overlaps_and_keeps_constants():
    """A constant map stays that constant, however the windows overlap and whatever the final size."""
    spans, cells = ((0, 224), (112, 336), (176, 400)), (14, 14, 14)
    operator = axis_operator(spans, cells, 400, 517)
    np.testing.assert_allclose(operator.sum(dim=1).numpy(), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="uncovered"):
        axis_operator(((0, 100),), (6,), 200, 200)
