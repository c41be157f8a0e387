"""Window grid, working size and resize against independent formulations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sfp_core.windows import (
    PIXEL_MEAN,
    PIXEL_STD,
    WindowLayout,
    normalise,
    resize_image,
    window_grid,
    window_spans,
    working_size,
)


def expected_grid(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """docs/algorithm.md section 7, item 2, spelled out one axis at a time."""

    def axis(size: int) -> list[tuple[int, int]]:
        count = max(size - crop + stride - 1, 0) // stride + 1
        spans = []
        for i in range(count):
            start = i * stride
            end = min(start + crop, size)
            spans.append((max(end - crop, 0), end))
        return spans

    return [(y1, x1, y2, x2) for y1, y2 in axis(height) for x1, x2 in axis(width)]


@pytest.mark.parametrize(
    "height,width",
    [(224, 224), (224, 300), (336, 449), (160, 160), (100, 500), (448, 448), (336, 336), (225, 224), (1, 1), (17, 900)],
)
def test_window_grid_follows_the_spec_formula(height, width):
    windows = window_grid(height, width, 224, 112)
    assert windows == expected_grid(height, width, 224, 112)
    covered = np.zeros((height, width), dtype=int)
    for y1, x1, y2, x2 in windows:
        assert (y2 - y1) == min(224, height) and (x2 - x1) == min(224, width)  # keeps the crop size where possible
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1  # every pixel is seen
    layout = WindowLayout.of(height, width, 224, 112)
    assert [(y1, x1, y2, x2) for r, c, y1, x1, y2, x2 in layout.windows()] == windows
    for r, c, y1, x1, y2, x2 in layout.windows():  # a grid: row r and column c name the window's spans
        assert (layout.row_spans[r], layout.col_spans[c]) == ((y1, y2), (x1, x2))
    assert list(layout.row_spans) == window_spans(height, 224, 112)


def test_window_grid_many_sizes_against_brute_force():
    for height in range(1, 700, 37):
        for width in (1, 111, 224, 225, 336, 449, 672):
            assert window_grid(height, width, 224, 112) == expected_grid(height, width, 224, 112)


def test_exact_multiples_and_whole_image_mode():
    assert window_grid(448, 448, 224, 224) == [
        (0, 0, 224, 224),
        (0, 224, 224, 448),
        (224, 0, 448, 224),
        (224, 224, 448, 448),
    ]
    assert window_grid(333, 517, 0, 112) == [(0, 0, 333, 517)]


@pytest.mark.parametrize(
    "size,expected",
    [((375, 500), (336, 448)), ((500, 375), (448, 336)), ((336, 400), (336, 400)), ((100, 5000), (41, 2048))],
)
def test_working_size(size, expected):
    assert working_size(*size, short_side=336, long_side=2048) == expected


def test_working_size_never_below_one_patch():
    assert working_size(1, 20000, 336, 2048, min_side=16) == (16, 2048)


def naive_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel-centre bilinear interpolation with edge clamping, one pixel at a time."""
    in_h, in_w = image.shape[:2]
    out = np.zeros((out_h, out_w, image.shape[2]))
    for y in range(out_h):
        sy = max((y + 0.5) * in_h / out_h - 0.5, 0.0)
        y0 = min(int(np.floor(sy)), in_h - 1)
        y1, fy = min(y0 + 1, in_h - 1), sy - y0
        for x in range(out_w):
            sx = max((x + 0.5) * in_w / out_w - 0.5, 0.0)
            x0 = min(int(np.floor(sx)), in_w - 1)
            x1, fx = min(x0 + 1, in_w - 1), sx - x0
            top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
            bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
            out[y, x] = top * (1 - fy) + bottom * fy
    return out


def test_resize_is_plain_bilinear_rounded(rng):
    image = rng.integers(0, 256, size=(23, 31, 3), dtype=np.uint8)
    for out_h, out_w in [(11, 15), (40, 57)]:
        got = resize_image(image, (out_h, out_w)).astype(int)
        expected = np.rint(naive_bilinear(image.astype(float), out_h, out_w)).astype(int)
        assert np.abs(got - expected).max() <= 1
        assert (got == expected).mean() > 0.99
    assert resize_image(image, (23, 31)) is image


def test_normalise_uses_clip_constants_on_0_255():
    image = torch.full((2, 2, 3), 200, dtype=torch.uint8)
    out = normalise(image)
    for c in range(3):
        assert torch.allclose(out[c], torch.tensor((200 - PIXEL_MEAN[c]) / PIXEL_STD[c]))
