"""Window logits to one image's logits at its original size, kept as two small matrices per image.

The reference upsamples every window's patch-grid logits to the window's
pixels, sums the overlapping windows, divides by the coverage and upsamples
the average to the original size (docs/algorithm.md section 7). Each of
those steps is linear and acts on rows and columns separately, and the
windows form a grid, so the whole chain is `rows_op @ grid[q] @ cols_op.T`
for every query name `q`: `grid` holds the windows' patch-grid logits side by
side (`names x sum(window rows) x sum(window columns)`), `rows_op` is
`H x sum(window rows)` and `cols_op` is `W x sum(window columns)`. Building
the operators costs microseconds, and applying them is two small matrix
products per name instead of names x 224 x 224 interpolated values per window
and a full-size interpolation, with the same numbers to float round-off.
Any band of output rows can be produced alone, so memory follows the band.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch

from .windows import WindowLayout

Span = tuple[int, int]  # (start, stop) of a window along one axis, in working pixels


def bilinear_matrix(source: int, target: int) -> torch.Tensor:
    """`target x source` float64 matrix of PyTorch's bilinear resampling along one axis with
    half-pixel centres (`align_corners=False`, no antialias): target position `t` reads
    `(t + 0.5) * source / target - 0.5`, floored at 0, from its two neighbours."""
    position = ((torch.arange(target, dtype=torch.float64) + 0.5) * (source / target) - 0.5).clamp_min(0)
    first = position.floor().long().clamp_max(source - 1)
    second = (first + 1).clamp_max(source - 1)
    weight = position - first.double()
    matrix = torch.zeros(target, source, dtype=torch.float64)
    rows = torch.arange(target)
    matrix.index_put_((rows, first), 1.0 - weight, accumulate=True)
    matrix.index_put_((rows, second), weight, accumulate=True)
    return matrix


@lru_cache(maxsize=256)
def axis_operator(spans: tuple[Span, ...], cells: tuple[int, ...], working: int, original: int) -> torch.Tensor:
    """`original x sum(cells)` float32 matrix along one axis: each window's `cells` patch-grid values
    upsampled to its span, the overlaps averaged, and the working axis resampled to `original`
    (cached and shared: read it, never write it)."""
    placed = torch.zeros(working, sum(cells), dtype=torch.float64)
    offset = 0
    for (start, stop), count in zip(spans, cells, strict=True):
        placed[start:stop, offset : offset + count] = bilinear_matrix(count, stop - start)
        offset += count
    coverage = torch.zeros(working, dtype=torch.float64)
    for start, stop in spans:
        coverage[start:stop] += 1
    if bool((coverage == 0).any()):
        raise ValueError(f"windows {spans} leave part of a {working}-pixel axis uncovered")
    return (bilinear_matrix(working, original) @ (placed / coverage[:, None])).float()


@dataclass(frozen=True)
class StitchedLogits:
    """One image's `names x H x W` logits, never built whole unless asked: `rows(a, b)` makes a band."""

    rows_op: torch.Tensor  # H x R
    grid: torch.Tensor  # names x R x C: window logits placed block by block
    cols_op: torch.Tensor  # W x C

    @property
    def names(self) -> int:
        return int(self.grid.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.rows_op.shape[0]), int(self.cols_op.shape[0])

    @cached_property
    def _columns_done(self) -> torch.Tensor:
        """`names x R x W`: the column side applied once, shared by every band."""
        return self.grid @ self.cols_op.t()

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Output rows `start..stop` of every name: `names x (stop - start) x W` float32."""
        return torch.matmul(self.rows_op[start:stop], self._columns_done)

    def mirrored(self) -> StitchedLogits:
        """The logits of a horizontally flipped view back in the image's orientation: output column `x`
        reads the view's column `W - 1 - x`."""
        return StitchedLogits(self.rows_op, self.grid, self.cols_op.flip(0))


@dataclass(frozen=True)
class MeanLogits:
    """The mean of several views' logits at the same output size (test-time augmentation), made a band
    at a time like each view's."""

    views: tuple[StitchedLogits, ...]

    @property
    def names(self) -> int:
        return self.views[0].names

    @property
    def size(self) -> tuple[int, int]:
        return self.views[0].size

    def rows(self, start: int, stop: int) -> torch.Tensor:
        total = self.views[0].rows(start, stop)
        for view in self.views[1:]:
            total += view.rows(start, stop)
        return total / len(self.views)


@dataclass(frozen=True)
class DenseLogits:
    """Logits already built at the output size (`names x H x W`), such as PAMR's refined map."""

    logits: torch.Tensor

    @property
    def names(self) -> int:
        return int(self.logits.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.logits.shape[1]), int(self.logits.shape[2])

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.logits[:, start:stop].float()


class LogitGrid:
    """Collects one image's window logits (`names x rows x cols` each, in any order) into `StitchedLogits`."""

    def __init__(self, layout: WindowLayout, patch: int, names: int, original: tuple[int, int], device: torch.device):
        self.layout = layout
        self.original = original
        self.row_cells = tuple((stop - start) // patch for start, stop in layout.row_spans)
        self.col_cells = tuple((stop - start) // patch for start, stop in layout.col_spans)
        self._row_offsets = _offsets(self.row_cells)
        self._col_offsets = _offsets(self.col_cells)
        self.grid = torch.zeros((names, sum(self.row_cells), sum(self.col_cells)), device=device)

    def place(self, row: int, col: int, logits: torch.Tensor) -> None:
        """Put a window's logits at its place in the layout (row and column of windows)."""
        top, left = self._row_offsets[row], self._col_offsets[col]
        cells = (self.row_cells[row], self.col_cells[col])
        if tuple(logits.shape[1:]) != cells:
            raise ValueError(f"window ({row}, {col}) has a {tuple(logits.shape[1:])} patch grid, expected {cells}")
        self.grid[:, top : top + cells[0], left : left + cells[1]] = logits.float()

    def stitched(self) -> StitchedLogits:
        layout, device = self.layout, self.grid.device
        rows_op = axis_operator(layout.row_spans, self.row_cells, layout.height, self.original[0])
        cols_op = axis_operator(layout.col_spans, self.col_cells, layout.width, self.original[1])
        return StitchedLogits(rows_op.to(device), self.grid, cols_op.to(device))


def _offsets(cells: tuple[int, ...]) -> list[int]:
    offsets, total = [], 0
    for count in cells:
        offsets.append(total)
        total += count
    return offsets
