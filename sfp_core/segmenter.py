"""SFPSegmenter: whole images in, masks and outlier statistics out, windows batched."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import Backbone, load_backbone
from .config import SFPConfig
from .pamr import pamr
from .postprocess import Thresholds, label_map
from .purifier import sfp_forward
from .results import ImageStats, Outlier, SegmentResult
from .stitch import DenseLogits, LogitGrid, MeanLogits, StitchedLogits
from .text import TextEmbeddingCache
from .vit import ViTRunner
from .vocabulary import Vocabulary
from .windows import ImagePreparation, WindowLayout, normalise, resize_pixels, view_size

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

# On CPU, glibc gives every allocation above 32 MB fresh pages from the kernel (zeroed, one fault
# per 4 KB), so a forward of 48 windows of ViT-B/16 spent seconds in the kernel; under this budget
# for the widest activation, the allocator reuses its memory (bench/sfp_throughput.py).
CPU_FORWARD_BYTES = 16 << 20


@dataclass(frozen=True)
class _View:
    """One image as the ViT sees it: the working image itself, or a rescaled and/or mirrored copy
    (test-time augmentation, docs/algorithm.md section 7, item 4)."""

    image: int
    flipped: bool
    identity: bool  # scale 1, not flipped: the view whose outliers are the image's statistics
    pixels: torch.Tensor  # 3 x h x w, normalised


@dataclass(frozen=True)
class _Window:
    view: int
    image: int
    index: int  # position in the image's sliding-window order
    row: int  # row and column of windows the window sits in (WindowLayout)
    col: int
    y1: int
    x1: int
    y2: int
    x2: int


@dataclass
class _Found:
    """One image's outliers so far, and how many windows and patches it had."""

    outliers: list[Outlier] = field(default_factory=list)
    patches: int = 0
    windows: int = 0


class SFPSegmenter:
    """Training-free open-vocabulary segmentation with SFP on a frozen CLIP ViT."""

    def __init__(
        self,
        backbone: Backbone,
        vocabulary: Vocabulary,
        config: SFPConfig | None = None,
        device: str | torch.device = "cpu",
    ):
        self.device = torch.device(device)
        self.backbone = backbone
        self.model = backbone.model.to(self.device).eval()
        self.runner = ViTRunner(self.model.visual)
        self.config = (config or SFPConfig()).with_block_defaults(self.runner.depth)
        self.preparation = ImagePreparation(self.config.short_side, self.config.long_side, self.runner.patch)
        self._autocast_dtype = None
        if self.config.precision != "fp32":
            if self.device.type == "cuda":
                self._autocast_dtype = _AUTOCAST_DTYPES[self.config.precision]
            else:
                warnings.warn(f"precision {self.config.precision} is for CUDA; running fp32 on CPU", stacklevel=2)
        self._text = TextEmbeddingCache(self.model, backbone.tokenizer, self.device, self.config.prompt_templates())
        self.set_vocabulary(vocabulary)

    @classmethod
    def from_pretrained(
        cls,
        arch: str = "ViT-B-16",
        weights: str = "openai",
        vocabulary: Vocabulary | Sequence[Sequence[str] | str] | str | Path | None = None,
        config: SFPConfig | None = None,
        device: str | torch.device = "cpu",
        *,
        quick_gelu: bool | None = None,
        storage_options: dict[str, Any] | None = None,
        cache_dir: str | Path | None = None,
        sha256: str | None = None,
        seed: int = 0,
    ) -> SFPSegmenter:
        """Load `arch` with `weights` (open_clip tag | file | fsspec URI | "random")."""
        if vocabulary is None:
            raise ValueError("vocabulary is required: a Vocabulary, a list of classes, or a class-name file")
        if isinstance(vocabulary, (str, Path)):
            vocabulary = Vocabulary.from_file(vocabulary)
        elif not isinstance(vocabulary, Vocabulary):
            vocabulary = Vocabulary(vocabulary)
        backbone = load_backbone(
            arch,
            weights,
            quick_gelu=quick_gelu,
            storage_options=storage_options,
            cache_dir=cache_dir,
            sha256=sha256,
            seed=seed,
        )
        return cls(backbone, vocabulary, config, device)

    # vocabulary -----------------------------------------------------------------
    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Switch classes; names already encoded are reused."""
        self.vocabulary = vocabulary
        self.text_features = self._text.features(vocabulary.query_names)
        self._query_to_class = torch.tensor(vocabulary.query_to_class, device=self.device)

    # images ---------------------------------------------------------------------
    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Resize an `H x W x 3` uint8 RGB image to SFP's working size (CPU-side step)."""
        _check_image(image, "image")
        return self.preparation.apply(image)

    @torch.inference_mode()
    def segment(
        self,
        images: Sequence[np.ndarray],
        *,
        original_sizes: Sequence[tuple[int, int]] | None = None,
        return_probs: bool = False,
        return_logits: bool = False,
    ) -> list[SegmentResult]:
        """Segment `H x W x 3` uint8 RGB images of any sizes.

        With `original_sizes`, the images are taken as already `prepare`d (each
        must have the working size this segmenter's preparation gives its
        original size) and the masks come out at the original sizes. With
        `return_logits`, each result holds the query names' logits that
        post-processing starts from (the mean over the views).
        """
        if original_sizes is not None and len(original_sizes) != len(images):
            raise ValueError(f"{len(original_sizes)} original_sizes for {len(images)} images")
        workings, sizes = [], []
        for i, image in enumerate(images):
            _check_image(image, f"image {i}")
            if original_sizes is None:
                working, size = self.prepare(image), image.shape[:2]
            else:
                working, size = image, self._check_prepared(image, tuple(original_sizes[i]), i)
            sizes.append(size)
            workings.append(torch.from_numpy(_owned(working)).to(self.device))
        if not workings:
            return []
        return self._segment_windows(self._views(workings), sizes, return_probs, return_logits)

    def _views(self, workings: list[torch.Tensor]) -> list[_View]:
        """Every view of every working image (`H x W x 3` uint8): one per scale and, with `flip`, its
        mirror; a view is resized from the working image, so prepared pixels are all it needs."""
        views = []
        for image, working in enumerate(workings):
            for scale, flipped in self.config.views():
                size = view_size(working.shape[0], working.shape[1], scale, self.runner.patch)
                pixels = resize_pixels(working, size)
                if flipped:
                    pixels = pixels.flip(1)
                views.append(_View(image, flipped, scale == 1.0 and not flipped, normalise(pixels)))
        return views

    def _segment_windows(
        self, views: list[_View], sizes: list[tuple[int, int]], return_probs: bool, return_logits: bool
    ) -> list[SegmentResult]:
        """Forward the windows of all views of all images in shape-grouped chunks; an image is finished
        (its views averaged and post-processed, its logits freed) as soon as its last window is done, so
        memory holds the images of one chunk, not the whole batch."""
        crop, stride = self.config.slide_crop, self.config.slide_stride
        layouts = [WindowLayout.of(v.pixels.shape[1], v.pixels.shape[2], crop, stride) for v in views]
        windows = self._windows(views, layouts)
        pending = Counter(w.image for w in windows)
        views_of: dict[int, list[int]] = defaultdict(list)
        for index, view in enumerate(views):
            views_of[view.image].append(index)
        identity = {view.image: view.pixels for view in views if view.identity}
        grids: dict[int, LogitGrid] = {}
        found: dict[int, _Found] = defaultdict(_Found)
        results: list[SegmentResult | None] = [None] * len(sizes)
        names = len(self.text_features)
        for chunk in self._chunks(windows):
            batch = torch.stack([views[w.view].pixels[:, w.y1 : w.y2, w.x1 : w.x2] for w in chunk])
            with self._autocast():
                out = sfp_forward(self.runner, batch, self.text_features, self.config)
            counted = [j for j, w in enumerate(chunk) if views[w.view].identity]
            self._record_outliers(chunk, counted, out.outliers, out.scores, out.grid, identity, sizes, found)
            for j, w in enumerate(chunk):
                if w.view not in grids:
                    grids[w.view] = LogitGrid(layouts[w.view], self.runner.patch, names, sizes[w.image], self.device)
                grids[w.view].place(w.row, w.col, out.logits[j])
                pending[w.image] -= 1
                if not pending[w.image]:
                    stitched = [self._stitched(grids.pop(v), views[v].flipped) for v in views_of[w.image]]
                    logits = stitched[0] if len(stitched) == 1 else MeanLogits(tuple(stitched))
                    image_found = found.pop(w.image)
                    results[w.image] = self._finish(logits, identity[w.image], image_found, return_probs, return_logits)
        return results

    # internals ------------------------------------------------------------------
    def _check_prepared(self, image: np.ndarray, original: tuple[int, int], index: int) -> tuple[int, int]:
        expected = self.preparation.size_for(*original)
        if image.shape[:2] != expected:
            raise ValueError(
                f"image {index} is {image.shape[0]} x {image.shape[1]}, but this segmenter prepares an image of "
                f"{original[0]} x {original[1]} to {expected[0]} x {expected[1]}: it was resized with other settings"
            )
        return original

    def _autocast(self):
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)

    @staticmethod
    def _windows(views: list[_View], layouts: list[WindowLayout]) -> list[_Window]:
        return [
            _Window(v, views[v].image, k, *box)
            for v, layout in enumerate(layouts)
            for k, box in enumerate(layout.windows())
        ]

    @staticmethod
    def _stitched(grid: LogitGrid, flipped: bool) -> StitchedLogits:
        """A view's logits at the original size, a mirrored view's mirrored back."""
        stitched = grid.stitched()
        return stitched.mirrored() if flipped else stitched

    def windows_per_forward(self, height: int, width: int) -> int:
        """How many windows of `height x width` pixels run through the ViT together: at most
        `max_windows_per_forward`, and on CPU at most what keeps the widest activation under
        `CPU_FORWARD_BYTES` (on CUDA, PyTorch's caching allocator reuses memory of any size)."""
        limit = self.config.max_windows_per_forward
        if self.device.type != "cpu":
            return limit
        return max(1, min(limit, CPU_FORWARD_BYTES // self.runner.activation_bytes(height, width)))

    def _chunks(self, windows: list[_Window]):
        """Windows grouped by shape, in forwards of at most `windows_per_forward`."""
        by_shape: dict[tuple[int, int], list[_Window]] = defaultdict(list)
        for w in windows:
            by_shape[(w.y2 - w.y1, w.x2 - w.x1)].append(w)
        for (height, width), group in by_shape.items():
            limit = self.windows_per_forward(height, width)
            for start in range(0, len(group), limit):
                yield group[start : start + limit]

    def _record_outliers(self, chunk, counted, mask, scores, grid, pixels, sizes, found: dict[int, _Found]) -> None:
        """The outliers of a chunk's identity-view windows (`counted`), moved to the host once, into each
        image's record (boxes in its pixels)."""
        if not counted:
            return
        rows, cols = grid
        mask_np, scores_np = mask.cpu().numpy(), scores.cpu().numpy()
        p = self.runner.patch
        for j in counted:
            w = chunk[j]
            record = found[w.image]
            record.patches += rows * cols
            record.windows += 1
            height, width = sizes[w.image]
            sy = height / pixels[w.image].shape[1]
            sx = width / pixels[w.image].shape[2]
            for flat in np.flatnonzero(mask_np[j]):
                r, c = divmod(int(flat), cols)
                y0, x0 = w.y1 + r * p, w.x1 + c * p
                box = (
                    math.floor(x0 * sx),
                    math.floor(y0 * sy),
                    min(math.ceil((x0 + p) * sx), width),
                    min(math.ceil((y0 + p) * sy), height),
                )
                record.outliers.append(Outlier(w.index, w.y1, w.x1, r, c, float(scores_np[j, flat]), box))

    def _finish(
        self, logits: StitchedLogits | MeanLogits, pixels, found: _Found, return_probs, return_logits
    ) -> SegmentResult:
        outliers = sorted(found.outliers, key=lambda o: (o.window, -o.score))
        patches, windows = found.patches, found.windows
        raw = logits.rows(0, logits.size[0]).float().cpu().numpy() if return_logits else None
        if self.config.pamr_steps:  # PAMR refines the whole map at once: it needs it at full size
            height, width = logits.size
            guide = F.interpolate(pixels[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            logits = DenseLogits(pamr(guide, logits.rows(0, height), self.config.pamr_steps))
        thresholds = Thresholds(self.config.logit_scale, self.config.area_thd, self.config.prob_thd)
        result = label_map(logits, self._query_to_class, self.vocabulary.num_classes, thresholds, return_probs)
        labels, confidence, probs = result.labels, result.confidence, result.probs
        areas = torch.bincount(labels.flatten(), minlength=self.vocabulary.num_classes).cpu().numpy()
        scores = [o.score for o in outliers]
        stats = ImageStats(
            windows=windows,
            patches=patches,
            outlier_count=len(outliers),
            outlier_ratio=len(outliers) / patches if patches else 0.0,
            score_min=min(scores) if scores else None,
            score_mean=float(np.mean(scores)) if scores else None,
            score_max=max(scores) if scores else None,
            class_pixels={int(c): int(a) for c, a in enumerate(areas) if a},
            mean_confidence=float(confidence.mean()),
        )
        return SegmentResult(
            mask=labels.cpu().numpy().astype(self.vocabulary.mask_dtype),
            confidence=confidence.float().cpu().numpy(),
            outliers=outliers,
            stats=stats,
            working_size=(int(pixels.shape[1]), int(pixels.shape[2])),
            probs=probs.float().cpu().numpy() if return_probs else None,
            logits=raw,
        )


def _check_image(image: Any, label: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}".strip()
        raise ValueError(f"{label} must be an H x W x 3 uint8 RGB numpy array, got {desc}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{label} is empty ({image.shape[0]} x {image.shape[1]} pixels)")


def _owned(array: np.ndarray) -> np.ndarray:
    """The array itself when torch may share it (C-contiguous and writable), else a copy: arrays read
    zero-copy from Arrow are read-only, and sharing one with torch is undefined behaviour."""
    return array if array.flags.c_contiguous and array.flags.writeable else np.array(array, order="C")
