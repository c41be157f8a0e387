"""`sfp-label export`: masks as PNG files in the PASCAL VOC folder layout, which mmsegmentation and
most segmentation trainers read directly.

    DIR/SegmentationClass/<image id without extension>.png   pixel = class index (255 = ignore)
    DIR/ImageSets/Segmentation/<split>.txt                   the exported ids, one per line
    DIR/classes.txt                                          class names, line i = class i

Images stay where they are: point the trainer's image folder at the input.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline import STATUS_OK, LabelledOutput, OutputError
from pipeline.output.reader import IGNORE_INDEX, check_ignore_index, class_thresholds
from sfp_core import spans_lines

from .destination import writable_folder
from .unsure import UnsurePixels

LABEL_DIR = "SegmentationClass"
SPLIT_DIR = "ImageSets/Segmentation"
CLASSES_FILE = "classes.txt"


@dataclass(frozen=True)
class ExportReport:
    exported: int
    skipped_errors: int
    unsure: UnsurePixels
    directory: Path
    split_file: Path
    unsafe_ids: list[str] = field(default_factory=list)  # ids that would name a file outside the export folder

    def one_line(self) -> str:
        ignored = self.unsure.phrase("set to ignore")
        skipped = f", {self.skipped_errors} error rows skipped" if self.skipped_errors else ""
        unsafe = ""
        if self.unsafe_ids:
            shown = ", ".join(repr(i) for i in self.unsafe_ids[:3]) + (" ..." if len(self.unsafe_ids) > 3 else "")
            unsafe = f", {len(self.unsafe_ids)} images skipped whose ids would leave the folder ({shown})"
        return (
            f"exported {self.exported} masks to {self.directory}{ignored}{skipped}{unsafe} (ids in {self.split_file})"
        )


def export(
    output: LabelledOutput,
    directory: Path,
    *,
    ignore_below: float | None = None,
    ignore_below_class: Mapping[str, float] | None = None,
    ignore_index: int = IGNORE_INDEX,
    split: str = "train",
) -> ExportReport:
    """Write every ok row's mask; error rows have no mask and are counted, not exported. Pixels whose stored
    confidence is below their class's threshold (`ignore_below_class`, else `ignore_below`) become
    `ignore_index`."""
    writable_folder(directory)
    names = output.class_names()
    if names is None:
        raise OutputError(f"{output.uri}: no run manifest names the classes; was it written by sfp-label?")
    broken = [name for name in names if spans_lines(name)]
    if broken:
        raise OutputError(f"{output.uri}: class name {broken[0]!r} spans lines; {CLASSES_FILE} holds one per line")
    unsure = UnsurePixels(names, class_thresholds(names, ignore_below, ignore_below_class))
    if unsure.thresholds is not None:
        check_ignore_index(ignore_index, len(names))
    columns = ["image_id", "status", "mask_png"] + (["confidence_png"] if unsure.thresholds is not None else [])
    selection = ExportedRows(".png")
    for stem, row in selection.rows(output, columns):
        png = row["mask_png"]
        if unsure.thresholds is not None:
            mask, low = unsure.mask(output.uri, row)
            mask[low] = ignore_index
            buffer = io.BytesIO()
            Image.fromarray(mask).save(buffer, format="PNG")
            png = buffer.getvalue()
        write_inside(directory, f"{LABEL_DIR}/{stem}.png", png)
    split_name = f"{SPLIT_DIR}/{split}.txt"
    write_inside(directory, split_name, "".join(f"{stem}\n" for stem in sorted(selection.exported)).encode())
    write_inside(directory, CLASSES_FILE, "".join(f"{name}\n" for name in names).encode())
    return ExportReport(
        len(selection.exported), selection.skipped, unsure, directory, directory / split_name, selection.unsafe
    )


@dataclass
class ExportedRows:
    """Which rows an export writes, and what it left out: ok rows with a mask, each under a stem that stays
    inside the folder (`safe_stem`), no two images under one file name (`suffix` completes the name)."""

    suffix: str
    exported: dict[str, str] = field(default_factory=dict)  # stem -> image id
    skipped: int = 0  # error rows
    unsafe: list[str] = field(default_factory=list)  # ids that would name a file outside the folder

    def rows(self, output: LabelledOutput, columns: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        for batch in output.batches(columns):
            for row in batch.to_pylist():
                if row["status"] != STATUS_OK or row["mask_png"] is None:
                    self.skipped += 1
                    continue
                stem = safe_stem(row["image_id"])
                if stem is None:
                    self.unsafe.append(row["image_id"])
                    continue
                if stem in self.exported:
                    raise OutputError(
                        f"images {self.exported[stem]!r} and {row['image_id']!r} would both export as "
                        f"{stem}{self.suffix}"
                    )
                self.exported[stem] = row["image_id"]
                yield stem, row


def safe_stem(image_id: str) -> str | None:
    """The id without its extension, as a relative path that stays inside the export folder; None if it
    cannot: absolute, `..`, empty parts, backslashes or control characters (which would also break the
    one-id-per-line split file)."""
    stem = posixpath.splitext(image_id)[0]
    parts = stem.split("/")
    if not stem or stem.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return None
    if "\\" in stem or any(ord(char) < 32 or ord(char) == 127 for char in stem):
        return None
    return stem


def write_inside(root: Path, relative: str, data: bytes) -> None:
    """Write `root/relative`, making its folders; refuses a symlink at any step below `root`, where one
    planted in the destination would carry folders or files outside it."""
    not_a_link(path_inside(root, relative)).write_bytes(data)


def path_inside(root: Path, relative: str) -> Path:
    """`root/relative` with its folders made, none of them a symlink; the last part is the caller's to check."""
    root.mkdir(parents=True, exist_ok=True)
    *folders, name = relative.split("/")
    target = root
    for part in folders:
        target = not_a_link(target / part)
        target.mkdir(exist_ok=True)
    return target / name


def not_a_link(path: Path) -> Path:
    if path.is_symlink():
        raise OutputError(f"{path} is a symbolic link; refusing to write through it")
    return path
