"""Ground-truth label maps of the standard benchmarks: which file belongs to an image and how its
stored values become class indices (the vocabulary's order) or the ignore index 255.

Every format maps a stored value to a class index, to 255 (ignore), or to "invalid": a value that
cannot occur in that format. Invalid values are an error, not ignored pixels, because they almost
always mean the wrong `--gt-format` (e.g. raw COCO-Stuff ids read as train ids).
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sfp_core import UserError

IGNORE = 255
_INVALID = -1
_LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")
# Cityscapes images end in `_leftImg8bit`, their labels in `_gtFine_<kind>.png` after the same prefix.
_CITYSCAPES_IMAGE_ENDING = "_leftImg8bit"


class LabelMapError(UserError, ValueError):
    """A ground-truth file that is not a label map of the chosen format."""


@dataclass(frozen=True)
class GtFormat:
    """How one benchmark stores its labels."""

    name: str
    suffix: str  # the label file is <image stem><suffix>, beside the image's relative folder
    classes: int | None  # classes the mapped labels use; None: as many as the vocabulary has
    table: tuple[tuple[int, int], ...] | None  # (stored value, class index or IGNORE); None: values are indices
    about: str

    def lookup(self) -> np.ndarray | None:
        """Stored value (0..255) -> class index, IGNORE, or -1 for values this format never stores."""
        if self.table is None:
            return None
        lut = np.full(256, _INVALID, np.int32)
        for stored, mapped in self.table:
            lut[stored] = mapped
        return lut


def _cityscapes_table() -> tuple[tuple[int, int], ...]:
    """labelIds 0..33 -> the 19 trainIds of the official cityscapesScripts table, every other id ignored."""
    train_ids = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
    return (*((i, train_ids.get(i, IGNORE)) for i in range(34)), (IGNORE, IGNORE))


def _coco_stuff_table() -> tuple[tuple[int, int], ...]:
    """Raw COCO-Stuff 164k ids 0..181 -> 171 contiguous classes, as mmsegmentation's converter does.

    The 11 thing ids COCO never uses (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90) are skipped.
    """
    unused = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
    used = [i for i in range(182) if i not in unused]
    return (*((stored, index) for index, stored in enumerate(used)), (IGNORE, IGNORE))


def _ade20k_table() -> tuple[tuple[int, int], ...]:
    """ADE20K's 0 = other (ignored), 1..150 -> 0..149 (mmsegmentation's reduce_zero_label)."""
    return ((0, IGNORE), *((stored, stored - 1) for stored in range(1, 151)), (IGNORE, IGNORE))


_FORMATS = (
    GtFormat(
        name="voc",
        suffix=".png",
        classes=None,
        table=None,
        about="<stem>.png (VOC2012/SegmentationClass): values = class ids, 255 = ignore",
    ),
    GtFormat(
        name="ade20k",
        suffix=".png",
        classes=150,
        table=_ade20k_table(),
        about="<stem>.png (annotations/validation): 0 = other (ignored), 1..150 -> classes 0..149",
    ),
    GtFormat(
        name="cityscapes",
        suffix="_gtFine_labelIds.png",
        classes=19,
        table=_cityscapes_table(),
        about="<city>/<stem>_gtFine_labelIds.png (gtFine/val): label ids -> 19 train ids, others ignored",
    ),
    GtFormat(
        name="coco_stuff",
        suffix=".png",
        classes=171,
        table=_coco_stuff_table(),
        about="<stem>.png (stuffthingmaps val2017): raw ids 0..181 -> 171 classes, 255 = ignore",
    ),
    GtFormat(
        name="trainids",
        suffix="_labelTrainIds.png",
        classes=None,
        table=None,
        about="<stem>_labelTrainIds.png as mmsegmentation's converters write them (Cityscapes, COCO-Stuff)",
    ),
)
FORMATS: dict[str, GtFormat] = {f.name: f for f in _FORMATS}


def gt_relative_path(image_id: str, suffix: str) -> str:
    """Label file of an image, relative to the ground-truth root: same folders, stem + suffix."""
    folder, name = posixpath.split(image_id)
    stem = posixpath.splitext(name)[0].removesuffix(_CITYSCAPES_IMAGE_ENDING)
    return posixpath.join(folder, stem + suffix)


def decode_label_map(data: bytes, where: str) -> np.ndarray:
    """PNG bytes -> `H x W` integer array of the stored values (palette indices, not colours)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:
        raise LabelMapError(f"{where}: not a readable label image ({type(exc).__name__}: {exc})") from None
    if image.mode not in _LABEL_MODES:
        raise LabelMapError(
            f"{where}: a {image.mode} image, not a label map (expected one channel of class ids: grey or palette PNG)"
        )
    return np.asarray(image).astype(np.int64)


def to_class_indices(stored: np.ndarray, fmt: GtFormat, classes: int, where: str) -> np.ndarray:
    """Stored values -> class indices 0..classes-1 or IGNORE; values the format never stores raise."""
    lut = fmt.lookup()
    if lut is not None:
        mapped = lut[np.clip(stored, 0, 255)]
        bad = (mapped == _INVALID) | (stored > 255)
    else:
        mapped = stored
        bad = ((stored >= classes) & (stored != IGNORE)) | (stored < 0)
    if bad.any():
        values = np.unique(stored[bad])[:8].tolist()
        raise LabelMapError(
            f"{where}: values {values} are not labels of {fmt.name} with {classes} classes "
            f"(wrong --gt-format, or a vocabulary that does not match the dataset?)"
        )
    return mapped
