"""Pixels that `--ignore-below` / `--ignore-below-class` leave out of exported labels, counted against all
exported pixels, in all and per class (a pixel's class is its mask value)."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pipeline.output.reader import confidence_of, unsure_pixels


@dataclass
class UnsurePixels:
    """Running counts over the exported masks; `thresholds` as `class_thresholds` gives them (None: none)."""

    names: Sequence[str] = ()
    thresholds: np.ndarray | None = None
    ignored: int = 0
    total: int = 0
    class_ignored: Counter[int] = field(default_factory=Counter)
    class_pixels: Counter[int] = field(default_factory=Counter)

    def mask(self, uri: str, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """The row's mask (a writable copy) and where it is unsure (None without thresholds), counted."""
        mask = np.array(Image.open(io.BytesIO(row["mask_png"])))
        if self.thresholds is None:
            return mask, None
        unsure = unsure_pixels(mask, confidence_of(uri, row), self.thresholds)
        self.ignored += int(unsure.sum())
        self.total += unsure.size
        _count(self.class_pixels, mask)
        _count(self.class_ignored, mask[unsure])
        return mask, unsure

    @property
    def share(self) -> float:
        return self.ignored / self.total if self.total else 0.0

    def phrase(self, what: str) -> str:
        """ ", N pixels (S%) <what>" for a report line; empty when nothing was left out."""
        return f", {self.ignored} pixels ({self.share:.1%}) {what}" if self.ignored else ""

    def class_lines(self) -> list[str]:
        """Per class that has pixels: how many were ignored, and below which threshold; none without thresholds."""
        if self.thresholds is None:
            return []
        lines = []
        for value in sorted(self.class_pixels):
            name = self.names[value] if value < len(self.names) else str(value)
            ignored, pixels = self.class_ignored[value], self.class_pixels[value]
            threshold = float(self.thresholds[min(value, len(self.thresholds) - 1)]) / 255.0
            lines.append(
                f"  class {value} {name}: {ignored} of {pixels} pixels ({ignored / pixels:.1%}) ignored, "
                f"below {threshold:.3g}"
            )
        return lines


def _count(counter: Counter[int], values: np.ndarray) -> None:
    counts = np.bincount(values.ravel())
    for value in np.flatnonzero(counts):
        counter[int(value)] += int(counts[value])
