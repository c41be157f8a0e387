"""Read a finished output: the current data folder's rows (through the pointer) and the run manifests.

`LabelledOutput` is what show/export/eval/render use; `read_labels` is the
public read helper: one `LabelledImage` per row, masks as numpy arrays,
streamed batch by batch from any URI the pipeline writes to.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from PIL import Image

from sfp_core import UserError

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


class OutputError(UserError, ValueError):
    """The URI holds no labelling output (missing, empty, or not ours)."""


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
    uri: str, storage_options: dict[str, Any] | None = None, *, confidence: bool = False
) -> Iterator[LabelledImage]:
    """Every image of the output at `uri`, decoded, in file order; streams (one batch of rows in memory).

    `confidence=True` also decodes the confidence maps (outputs written with
    `output.confidence`; None otherwise). A folder that is not an sfp-label
    output raises `OutputError`; one whose first run has not committed yields nothing.
    """
    output = LabelledOutput.open(uri, storage_options)
    names = tuple(output.class_names() or ())
    columns = [*_HELPER_COLUMNS, *(["confidence_png"] if confidence else [])]
    for batch in output.batches(columns):
        for row in batch.to_pylist():
            yield _decoded(row, names)


def _decoded(row: dict[str, Any], names: tuple[str, ...]) -> LabelledImage:
    ids = row["class_ids"] or []
    return LabelledImage(
        image_id=row["image_id"],
        uri=row["uri"],
        status=row["status"],
        error=row["error"],
        width=row["width"],
        height=row["height"],
        mask=_png(row["mask_png"]),
        confidence=None if row.get("confidence_png") is None else _png(row["confidence_png"]) / np.float32(255),
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
