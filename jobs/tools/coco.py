"""`sfp-label export --format coco`: one COCO JSON for detection / instance-segmentation trainers and
annotation tools (CVAT, FiftyOne, supervision).

Each image with a mask gets one annotation per class present, its pixels as
COCO run-length encoding (pycocotools), with `area` and `bbox`. Category ids
are class index + 1 (COCO keeps 0 free); each category also states the
`mask_value` it has in the masks. With `ignore_below` / `ignore_below_class`,
pixels whose stored confidence is below their class's threshold belong to no
annotation. Images and annotations are
streamed to spool files, so memory stays one image deep.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from pycocotools import mask as coco_mask

from pipeline import STATUS_OK, LabelledOutput, OutputError
from pipeline.output.reader import class_thresholds

from .destination import DestinationError, writable_folder
from .unsure import UnsurePixels

ANNOTATIONS_FILE = "annotations.json"


@dataclass(frozen=True)
class CocoReport:
    images: int
    annotations: int
    skipped_errors: int
    unsure: UnsurePixels
    path: Path

    def one_line(self) -> str:
        ignored = self.unsure.phrase("left out as unsure")
        skipped = f", {self.skipped_errors} error rows skipped" if self.skipped_errors else ""
        return f"exported {self.images} images and {self.annotations} annotations to {self.path}{ignored}{skipped}"


def coco_path(destination: Path) -> Path:
    """A `.json` destination is the file; anything else is a folder that gets `annotations.json`."""
    return destination if destination.suffix == ".json" else destination / ANNOTATIONS_FILE


def export_coco(
    output: LabelledOutput,
    destination: Path,
    *,
    ignore_below: float | None = None,
    ignore_below_class: Mapping[str, float] | None = None,
) -> CocoReport:
    names = output.class_names()
    if names is None:
        raise OutputError(f"{output.uri}: no pointer names the classes; was it written by sfp-label?")
    path = coco_path(destination)
    if path.is_dir():
        raise DestinationError(f"{path} is a folder; give a .json file or a folder to hold {ANNOTATIONS_FILE}")
    writable_folder(path.parent).mkdir(parents=True, exist_ok=True)
    unsure = UnsurePixels(names, class_thresholds(names, ignore_below, ignore_below_class))
    columns = ["image_id", "status", "width", "height", "mask_png"]
    columns += ["confidence_png"] if unsure.thresholds is not None else []
    counts = {"images": 0, "annotations": 0, "skipped": 0}
    with tempfile.TemporaryFile("w+") as images, tempfile.TemporaryFile("w+") as annotations:
        for batch in output.batches(columns):
            for row in batch.to_pylist():
                if row["status"] != STATUS_OK or row["mask_png"] is None:
                    counts["skipped"] += 1
                    continue
                counts["images"] += 1
                image_id = counts["images"]
                _append(images, {"id": image_id, "file_name": row["image_id"], "width": row["width"],
                                 "height": row["height"]}, first=image_id == 1)  # fmt: skip
                mask, low = unsure.mask(output.uri, row)
                mask = mask.astype(np.int64)
                if low is not None:
                    mask[low] = -1  # in no annotation
                for annotation in class_annotations(mask, image_id):
                    counts["annotations"] += 1
                    _append(annotations, {"id": counts["annotations"], **annotation}, first=counts["annotations"] == 1)
        _assemble(path, names, images, annotations)
    return CocoReport(counts["images"], counts["annotations"], counts["skipped"], unsure, path)


def class_annotations(mask: np.ndarray, image_id: int) -> list[dict]:
    """One annotation per class value >= 0 in `mask`: RLE segmentation, area and bbox (pycocotools)."""
    found = []
    for value in np.unique(mask):
        if value < 0:
            continue
        rle = coco_mask.encode(np.asfortranarray(mask == value, dtype=np.uint8))
        found.append(
            {
                "image_id": image_id,
                "category_id": int(value) + 1,
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": int(coco_mask.area(rle)),
                "bbox": [float(v) for v in coco_mask.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    return found


def _append(spool: IO[str], entry: dict, *, first: bool) -> None:
    spool.write(("" if first else ",\n") + json.dumps(entry, separators=(",", ":")))


def _assemble(path: Path, names: list[str], images: IO[str], annotations: IO[str]) -> None:
    """The final JSON: small header, then the two spooled arrays copied in; written beside, then moved."""
    categories = [{"id": i + 1, "name": name, "supercategory": "sfp", "mask_value": i} for i, name in enumerate(names)]
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", encoding="utf-8") as out:
        out.write('{"info":{"description":"SFP pseudo-labels (sfp-label)"},"licenses":[],\n"categories":')
        out.write(json.dumps(categories))
        for key, spool in (("images", images), ("annotations", annotations)):
            out.write(f',\n"{key}":[\n')
            spool.seek(0)
            shutil.copyfileobj(spool, out)
            out.write("]")
        out.write("}\n")
    partial.replace(path)
