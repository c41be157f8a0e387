"""`sfp-label export --format yolo`: the Ultralytics YOLO segmentation layout.

    DEST/images/<id without extension><ext>  a symlink to the input image (images on this machine's disk)
    DEST/labels/<id without extension>.txt   one line per region: class x1 y1 x2 y2 ... (normalised, 0..1)
    DEST/images.txt                          images not on this disk: `images/<name>` TAB URI, one a line
    DEST/data.yaml                           path, train and val (= images), names (index -> name)

Ultralytics finds an image's labels by its stem, `images/` -> `labels/`. A
region is an 8-connected area of one class of at least `min_area` pixels; its
polygon is OpenCV's outer contour (RETR_EXTERNAL, CHAIN_APPROX_SIMPLE), as
Ultralytics' own mask converter makes them. Holes are not cut out: the polygon
around a hole covers it. Ultralytics draws smaller polygons over larger ones
(`overlap_mask`, its default), so a region of another class inside the hole
still wins there; a hole of ignored pixels, or of regions under `min_area`,
takes the class around it.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import cv2
import numpy as np
import yaml

from pipeline import LabelledOutput, OutputError
from pipeline.output.reader import class_thresholds
from pipeline.storage import is_local_uri, path_of_uri

from .destination import writable_folder
from .export import ExportedRows, not_a_link, path_inside, write_inside
from .unsure import UnsurePixels

DEFAULT_MIN_AREA = 16  # pixels: a 4 x 4 speck is noise in a pseudo-label
# Ultralytics' IMG_FORMATS: it reads no other suffix
IMAGE_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}
LISTED_FILE = "images.txt"


@dataclass(frozen=True)
class YoloReport:
    images: int
    polygons: int
    small_regions: int  # under min_area, or too thin to enclose an area
    listed: int  # images not on this disk, in images.txt
    skipped_errors: int
    unsure: UnsurePixels
    directory: Path
    unsafe_ids: list[str] = field(default_factory=list)

    def one_line(self) -> str:
        small = f", {self.small_regions} regions too small left out" if self.small_regions else ""
        ignored = self.unsure.phrase("left out as unsure")
        skipped = f", {self.skipped_errors} error rows skipped" if self.skipped_errors else ""
        unsafe = f", {len(self.unsafe_ids)} images skipped whose ids would leave the folder" if self.unsafe_ids else ""
        listed = (
            f"; {self.listed} images are not on this machine's disk: copy each to the name {LISTED_FILE} gives it"
            if self.listed
            else ""
        )
        return (
            f"exported {self.images} images and {self.polygons} polygons to {self.directory}"
            f"{small}{ignored}{skipped}{unsafe}{listed}"
        )


def export_yolo(
    output: LabelledOutput,
    directory: Path,
    *,
    min_area: int = DEFAULT_MIN_AREA,
    ignore_below: float | None = None,
    ignore_below_class: Mapping[str, float] | None = None,
) -> YoloReport:
    """Labels and image links of every ok row, and data.yaml; error rows are counted, not exported."""
    writable_folder(directory)
    names = output.class_names()
    if names is None:
        raise OutputError(f"{output.uri}: no run manifest names the classes; was it written by sfp-label?")
    unsure = UnsurePixels(names, class_thresholds(names, ignore_below, ignore_below_class))
    columns = ["image_id", "uri", "status", "mask_png"] + (["confidence_png"] if unsure.thresholds is not None else [])
    selection = ExportedRows("")
    counts = {"polygons": 0, "small": 0, "listed": 0}
    with contextlib.ExitStack() as stack:
        listed: IO[str] | None = None
        for stem, row in selection.rows(output, columns):
            mask, low = unsure.mask(output.uri, row)
            mask = mask.astype(np.int64)
            if low is not None:
                mask[low] = -1  # in no region
            polygons, small = class_polygons(mask, min_area)
            counts["polygons"] += len(polygons)
            counts["small"] += small
            write_inside(directory, f"labels/{stem}.txt", label_lines(polygons, mask.shape).encode())
            source = _local_file(row["uri"])
            name = f"images/{_image_name(stem, row['image_id'], row['uri'])}"
            if source is not None:
                _link_inside(directory, name, source)
                continue
            if listed is None:
                path = not_a_link(path_inside(directory, LISTED_FILE))
                listed = stack.enter_context(path.open("w", encoding="utf-8"))
            listed.write(f"{name}\t{row['uri']}\n")
            counts["listed"] += 1
    write_inside(directory, "data.yaml", data_yaml(directory, names, listed=counts["listed"] > 0).encode())
    return YoloReport(
        len(selection.exported), counts["polygons"], counts["small"], counts["listed"], selection.skipped, unsure,
        directory, selection.unsafe,
    )  # fmt: skip


def class_polygons(mask: np.ndarray, min_area: int) -> tuple[list[tuple[int, np.ndarray]], int]:
    """Per class value >= 0, the outer contour of each 8-connected region of at least `min_area` pixels, as
    pixel coordinates (x, y); and how many regions were left out (smaller, or too thin to enclose an area)."""
    polygons: list[tuple[int, np.ndarray]] = []
    left_out = 0
    for value in np.unique(mask):
        if value < 0:
            continue
        regions, labels, stats, _ = cv2.connectedComponentsWithStats((mask == value).astype(np.uint8), connectivity=8)
        for region in range(1, regions):
            x, y, width, height, area = (int(v) for v in stats[region])
            if area < min_area:
                left_out += 1
                continue
            # one pixel of margin: the contour of a region on the crop's edge is then traced like any other
            crop = np.pad(labels[y : y + height, x : x + width] == region, 1).astype(np.uint8)
            contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            points = contours[0].reshape(-1, 2) + np.array([x - 1, y - 1])
            if len(points) < 3:
                left_out += 1
                continue
            polygons.append((int(value), points))
    return polygons, left_out


def label_lines(polygons: list[tuple[int, np.ndarray]], shape: tuple[int, ...]) -> str:
    """YOLO segmentation lines: class, then x / width and y / height of each vertex."""
    height, width = shape[:2]
    return "".join(
        f"{value} " + " ".join(f"{x / width:.6f} {y / height:.6f}" for x, y in points) + "\n"
        for value, points in polygons
    )


def data_yaml(directory: Path, names: list[str], *, listed: bool) -> str:
    """Ultralytics' dataset file. Pseudo-labels have no held-out split: val is the training images too."""
    note = "# sfp-label export --format yolo: images/ links to the inputs, labels/ holds one polygon per region\n"
    if listed:
        note += f"# images not on this machine's disk are not in images/: {LISTED_FILE} lists each (name TAB URI)\n"
    body = {"path": str(directory.resolve()), "train": "images", "val": "images", "names": dict(enumerate(names))}
    return note + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def _local_file(uri: str) -> str | None:
    """The path of the row's image when it is a file on this disk: not object storage, not a shard or table."""
    if not is_local_uri(uri):
        return None
    path = path_of_uri(uri)[1] if "://" in uri else uri
    return path if posixpath.splitext(path)[1].lower() in IMAGE_SUFFIXES else None


def _image_name(stem: str, image_id: str, uri: str) -> str:
    """`<stem><ext>`, the extension an image suffix from the id or the URI (Ultralytics reads no other)."""
    for candidate in (image_id, urlsplit(uri).path):
        suffix = posixpath.splitext(candidate)[1]
        if suffix.lower() in IMAGE_SUFFIXES:
            return stem + suffix
    return stem


def _link_inside(root: Path, relative: str, source: str) -> None:
    """A symlink `root/relative` -> `source`; one this export made before is replaced, anything else refused."""
    link = path_inside(root, relative)
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise OutputError(f"{link} exists and is not a link to an input image; refusing to replace it")
    link.symlink_to(source)
