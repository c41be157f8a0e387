"""Read a finished output: the current data folder's rows (through the pointer) and the run manifests.

`LabelledOutput` is what show/export/eval/render use; `read_labels` is the
public read helper: one `LabelledImage` per row, masks as numpy arrays,
streamed batch by batch from any URI the pipeline writes to.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from PIL import Image

from sfp_core import UserError, mask_dtype_for

from ..retry import Retry
from ..storage import Location
from .identity import LabelIdentity
from .layout import POINTER_FILE
from .manifest import Manifest
from .rows import STATUS_OK
from .table import LabelTable
from .versions import Pointer

BATCH_ROWS = 1024
_STAT_COLUMNS = ("mean_confidence", "outlier_count", "outlier_ratio", "score_min", "score_mean", "score_max", "windows")
_HELPER_COLUMNS = ("image_id", "uri", "status", "error", "width", "height", "mask_png", "class_ids", *_STAT_COLUMNS)
IGNORE_INDEX = 255  # the usual pseudo-label ignore index (VOC, mmseg, torchvision)


class OutputError(UserError, ValueError):
    """The URI holds no labelling output (missing, empty, or not ours)."""


class ThresholdError(UserError, ValueError):
    """A confidence threshold that is not a probability, or names no class of the output."""


class LegacyOutputLayout(OutputError):
    """An output written by sfp-label 0.1 (data files at its root): `sfp-label upgrade` moves it."""


def legacy_advice(uri: str, found: list[str]) -> str:
    return (
        f"{uri} has the layout of sfp-label 0.1 ({', '.join(found[:2])} at its root); run `sfp-label upgrade {uri}` "
        "once to move its files into a data folder with a pointer and a dataset card (nothing is labelled again)"
    )


@dataclass
class LabelledOutput:
    """A labelling output: its current rows, what they mean, and the manifests of the runs that wrote it."""

    uri: str
    location: Location
    dataset: ds.Dataset
    manifests: list[Manifest]
    pointer: Pointer | None = None

    @classmethod
    def open(
        cls, uri: str, storage_options: dict[str, Any] | None = None, retry: Retry | None = None
    ) -> LabelledOutput:
        retry = retry or Retry()
        location = Location.parse(uri, storage_options)
        fs = location.filesystem()
        info = retry.call(f"opening {location.uri}", lambda: fs.get_file_info(location.path))
        if info.type != pafs.FileType.Directory:
            raise OutputError(f"{uri}: no such output folder")
        table = LabelTable(location, retry)
        legacy = table.legacy_files()
        if legacy:
            raise LegacyOutputLayout(legacy_advice(uri, legacy))
        pointer = table.pointer_as_written()
        manifests = Manifest.read_all(location, retry)
        if pointer is None and not manifests:  # a first run that has not committed has one or the other
            raise OutputError(f"{uri}: not an sfp-label output (no {POINTER_FILE}, no run manifests)")
        files = table.files_of(pointer) if pointer else []
        # Before its first file is committed an output still has its columns: an empty table, not no table.
        schema = pointer.identity.schema() if pointer and not files else None
        try:
            dataset = ds.dataset(files, schema=schema, filesystem=fs, format="parquet")
        except (pa.ArrowInvalid, OSError) as exc:
            raise OutputError(f"{uri}: not a Parquet output ({exc})") from exc
        return cls(uri, location, dataset, manifests, pointer)

    def batches(self, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
        """Stream the current rows, only the given columns (masks stay unread unless asked for)."""
        missing = [name for name in columns if name not in self.dataset.schema.names]
        if missing and self.dataset.files:
            raise OutputError(f"{self.uri}: rows have no column {', '.join(missing)}")
        if not self.dataset.files:
            return
        yield from self.dataset.to_batches(columns=list(columns), batch_size=BATCH_ROWS)

    @property
    def data_folder(self) -> str | None:
        """Where the current rows are, for other Parquet readers: a path for local outputs, else a URI."""
        if self.pointer is None:
            return None
        path = self.location.join(self.pointer.data)
        return path if self.location.scheme == "file" else self.location.uri_of(path)

    @property
    def identity(self) -> LabelIdentity | None:
        return self.pointer.identity if self.pointer else None

    def class_names(self) -> list[str] | None:
        """Display names of the classes (index = mask value)."""
        return self.identity.class_names if self.identity else None


@dataclass(frozen=True)
class LabelledImage:
    """One row of an output, decoded: `mask` is H x W class indices, `confidence` H x W floats in [0, 1].

    Two name lists, indexed differently: `class_names` lines up with `class_ids` (the classes this image
    holds), `all_class_names` with the mask's values (`all_class_names[mask[y, x]]` names a pixel).
    """

    image_id: str
    uri: str
    status: str
    error: str | None
    width: int | None
    height: int | None
    mask: np.ndarray | None
    confidence: np.ndarray | None
    class_ids: list[int]  # classes present in the mask, ascending
    class_names: list[str]  # their names, aligned with class_ids (class_names[i] names class_ids[i])
    all_class_names: tuple[str, ...]  # the output's whole vocabulary, index = mask value (one tuple for all rows)
    stats: dict[str, float | int | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


def read_labels(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    confidence: bool = False,
    ignore_below: float | None = None,
    ignore_below_class: Mapping[str, float] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Iterator[LabelledImage]:
    """Every image of the output at `uri`, decoded, in file order; streams (one batch of rows in memory).

    `confidence=True` also decodes the confidence maps (outputs written with
    `output.confidence`; None otherwise). `ignore_below` (a default) and
    `ignore_below_class` (class display name -> threshold) set mask pixels whose
    stored confidence is below their class's threshold to `ignore_index`, as
    `sfp-label export` does; `class_ids` and the stats stay as stored. A folder
    that is not an sfp-label output raises `OutputError`; one whose first run has
    not committed yields nothing.
    """
    output = LabelledOutput.open(uri, storage_options)
    names = tuple(output.class_names() or ())
    thresholds = class_thresholds(names, ignore_below, ignore_below_class)
    if thresholds is not None:
        check_ignore_index(ignore_index, len(names))
    columns = [*_HELPER_COLUMNS, *(["confidence_png"] if confidence or thresholds is not None else [])]
    for batch in output.batches(columns):
        for row in batch.to_pylist():
            image = _decoded(row, names, confidence)
            if thresholds is not None and image.mask is not None:
                mask = np.array(image.mask)
                mask[unsure_pixels(mask, confidence_of(uri, row), thresholds)] = ignore_index
                image = replace(image, mask=mask)
            yield image


def class_thresholds(
    names: Sequence[str], ignore_below: float | None, ignore_below_class: Mapping[str, float] | None
) -> np.ndarray | None:
    """Each mask value's threshold on the stored confidence (max probability x 255), plus a last one, the
    default, for values past the vocabulary; None when nothing is to be ignored. A class named in
    `ignore_below_class` (by its display name) has its own threshold, every other one `ignore_below` (or 0)."""
    per_class = dict(ignore_below_class or {})
    if ignore_below is None and not per_class:
        return None
    for name, value in [("the default", ignore_below or 0.0), *per_class.items()]:
        if not 0.0 <= value <= 1.0:
            raise ThresholdError(f"confidence threshold {value} for {name} is not a probability in 0..1")
    unknown = [name for name in per_class if name not in names]
    if unknown:
        raise ThresholdError(f"{unknown[0]!r} names no class to threshold; the classes are: {', '.join(names)}")
    default = ignore_below or 0.0
    # x 255 in float64, then float32: what comparing a float32 array with `below * 255.0` does
    return np.array([per_class.get(name, default) * 255.0 for name in names] + [default * 255.0], np.float32)


def unsure_pixels(mask: np.ndarray, confidence: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Where the stored confidence (uint8) is below the threshold of the pixel's class (`class_thresholds`)."""
    return confidence.astype(np.float32) < np.take(thresholds, mask, mode="clip")


def confidence_of(uri: str, row: dict[str, Any]) -> np.ndarray:
    """The row's stored confidence map; refused for outputs that did not keep one."""
    if row.get("confidence_png") is None:
        raise OutputError(
            f"{uri}: {row['image_id']} has no stored confidence; ignoring pixels below a threshold needs a run "
            "with output.confidence: true"
        )
    return _png(row["confidence_png"])


def check_ignore_index(ignore_index: int, classes: int) -> None:
    """The ignore index must be no class and fit the masks' integer type."""
    dtype = np.dtype(mask_dtype_for(classes))
    largest = int(np.iinfo(dtype).max)
    if not classes <= ignore_index <= largest:
        raise OutputError(
            f"ignore index {ignore_index} must lie in {classes}..{largest}: not a class of the {classes} classes "
            f"and inside the masks' {dtype.itemsize * 8}-bit range"
        )


def _decoded(row: dict[str, Any], names: tuple[str, ...], confidence: bool) -> LabelledImage:
    ids = row["class_ids"] or []
    return LabelledImage(
        image_id=row["image_id"],
        uri=row["uri"],
        status=row["status"],
        error=row["error"],
        width=row["width"],
        height=row["height"],
        mask=_png(row["mask_png"]),
        confidence=_png(row["confidence_png"]) / np.float32(255) if confidence and row["confidence_png"] else None,
        class_ids=ids,
        class_names=[names[i] if i < len(names) else str(i) for i in ids],
        all_class_names=names,
        stats={name: row[name] for name in _STAT_COLUMNS},
    )


def _png(data: bytes | None) -> np.ndarray | None:
    if data is None:
        return None
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)
