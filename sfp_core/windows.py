"""Whole images: working size, resize, normalisation and the sliding-window grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# CLIP's mean and std on the 0..255 scale, exactly as the reference uses them.
PIXEL_MEAN = (122.771, 116.746, 104.094)
PIXEL_STD = (68.501, 66.632, 70.323)


def working_size(height: int, width: int, short_side: int, long_side: int, min_side: int = 1) -> tuple[int, int]:
    """Aspect-preserving size with long side <= `long_side` and short side <= `short_side`.

    `min_side` (the patch size) keeps degenerate panoramas from collapsing to
    fewer pixels than one patch.
    """
    scale = min(long_side / max(height, width), short_side / min(height, width))
    return max(int(height * scale + 0.5), min_side), max(int(width * scale + 0.5), min_side)


def view_size(height: int, width: int, scale: float, min_side: int = 1) -> tuple[int, int]:
    """The size of a test-time augmentation view: the working size `height x width` times `scale`,
    rounded like the working size, never below one patch per side."""
    return max(int(height * scale + 0.5), min_side), max(int(width * scale + 0.5), min_side)


def resize_pixels(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an `H x W x 3` uint8 tensor on any device (half-pixel centres, no antialias,
    rounded back to uint8, like the reference's OpenCV resize); no-op when unchanged."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    tensor = image.permute(2, 0, 1).unsqueeze(0).float()
    resized = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0).contiguous()


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`resize_pixels` of an `H x W x 3` uint8 numpy image, on the CPU."""
    if image.shape[:2] == tuple(size):
        return image
    return resize_pixels(torch.from_numpy(np.ascontiguousarray(image)), size).numpy()


@dataclass(frozen=True)
class ImagePreparation:
    """How a whole image is resized before the sliding windows (docs/algorithm.md section 1).

    A pipeline resizes on CPU workers and hands the segmenter prepared
    pixels plus the original size; the segmenter checks each prepared image
    against its own preparation, so the two can never silently differ.
    """

    short_side: int
    long_side: int
    min_side: int  # the patch size: no side shrinks below one patch

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """The working size of an image of `height x width` pixels."""
        return working_size(height, width, self.short_side, self.long_side, self.min_side)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Resize an `H x W x 3` uint8 image to its working size."""
        return resize_image(image, self.size_for(*image.shape[:2]))


def prepare_image(image: np.ndarray, short_side: int, long_side: int, min_side: int) -> np.ndarray:
    """Resize an `H x W x 3` uint8 image to SFP's working size (a CPU-side step)."""
    return ImagePreparation(short_side, long_side, min_side).apply(image)


def normalise(image: torch.Tensor) -> torch.Tensor:
    """`H x W x 3` uint8 (any device) -> `3 x H x W` float32 normalised with CLIP's constants."""
    mean = torch.tensor(PIXEL_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=image.device).view(3, 1, 1)
    return (image.permute(2, 0, 1).float() - mean) / std


def window_spans(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """Sliding-window spans `(start, stop)` along one axis (docs/algorithm.md section 7, item 2).

    `crop = 0` is one span of the whole axis; an axis shorter than the crop is
    one span of its own length; the last span is shifted back to end at the edge.
    """
    if crop == 0:
        return [(0, length)]
    count = max(length - crop + stride - 1, 0) // stride + 1
    return [(max(min(i * stride + crop, length) - crop, 0), min(i * stride + crop, length)) for i in range(count)]


@dataclass(frozen=True)
class WindowLayout:
    """One image's sliding windows: a grid, every row of windows over every column of windows."""

    height: int
    width: int
    row_spans: tuple[tuple[int, int], ...]
    col_spans: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, height: int, width: int, crop: int, stride: int) -> WindowLayout:
        rows, cols = window_spans(height, crop, stride), window_spans(width, crop, stride)
        return cls(height, width, tuple(rows), tuple(cols))

    def windows(self) -> list[tuple[int, int, int, int, int, int]]:
        """`(row, col, y1, x1, y2, x2)` per window in mmseg's order (rows outer, columns inner)."""
        return [
            (r, c, y1, x1, y2, x2)
            for r, (y1, y2) in enumerate(self.row_spans)
            for c, (x1, x2) in enumerate(self.col_spans)
        ]


def window_grid(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Sliding windows `(y1, x1, y2, x2)` in mmseg's order (rows outer, columns inner)."""
    return [w[2:] for w in WindowLayout.of(height, width, crop, stride).windows()]
