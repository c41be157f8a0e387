"""`sfp-label eval`: mIoU, mAcc and aAcc of an output's masks against ground-truth label maps.

One streaming pass over the committed rows: every ok row's mask and its label map add to one
K x K confusion matrix (rows = ground truth, columns = prediction; pixels labelled 255 left out),
so the scores are dataset-wide sums, not means of per-image scores (mmsegmentation's definition).
Label files are fetched by a few threads ahead of the decoding, which matters on object storage.
"""

from __future__ import annotations

import csv
import io
import json
import math
import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fsspec import AbstractFileSystem
from PIL import Image

from pipeline import STATUS_OK, LabelledOutput, OutputError
from sfp_core import Vocabulary

from .labelmaps import IGNORE, GtFormat, LabelMapError, decode_label_map, gt_relative_path, to_class_indices
from .options import open_location

COLUMNS = ("image_id", "status", "mask_png", "model", "config_hash")
FETCH_THREADS = 8
MISSING_EXAMPLES = 5
METRICS_FILE = "metrics.json"
PER_CLASS_FILE = "per_class.csv"


class EvalError(OutputError):
    """The masks and the ground truth cannot be compared (mismatched sizes, classes, files)."""


@dataclass(frozen=True)
class GroundTruth:
    """A folder of label maps (local or any fsspec URI) in one format."""

    uri: str
    fs: AbstractFileSystem
    root: str
    format: GtFormat
    suffix: str

    @classmethod
    def open(
        cls, uri: str, fmt: GtFormat, suffix: str | None = None, storage_options: dict[str, Any] | None = None
    ) -> GroundTruth:
        fs, root = open_location(uri, storage_options)
        if not fs.isdir(root):
            raise EvalError(f"{uri}: no such ground-truth folder")
        return cls(uri, fs, root, fmt, fmt.suffix if suffix is None else suffix)

    def path_of(self, image_id: str) -> str:
        return posixpath.join(self.root, gt_relative_path(image_id, self.suffix))

    def fetch(self, image_id: str) -> bytes | None:
        """The label file's bytes, or None when the image has none."""
        try:
            return self.fs.cat_file(self.path_of(image_id))
        except FileNotFoundError:
            return None


def confusion(gt: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """`classes x classes` pixel counts (rows = ground truth) over pixels whose label is not IGNORE."""
    valid = gt != IGNORE
    index = gt[valid] * classes + pred[valid]
    return np.bincount(index, minlength=classes * classes).reshape(classes, classes)


def scores(matrix: np.ndarray) -> dict[str, Any]:
    """Per-class IoU and accuracy, and their means over the classes present in GT or prediction.

    IoU = TP / (TP + FP + FN), accuracy = TP / (TP + FN); a class absent from both sides has
    NaN IoU (and NaN accuracy when absent from the GT) and is left out of the means; aAcc = sum TP / pixels.
    """
    tp = np.diag(matrix).astype(np.float64)
    gt_pixels = matrix.sum(axis=1).astype(np.float64)
    pred_pixels = matrix.sum(axis=0).astype(np.float64)
    union = gt_pixels + pred_pixels - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt_pixels > 0, tp / gt_pixels, np.nan)
    return {
        "iou": iou,
        "acc": acc,
        "gt_pixels": gt_pixels.astype(np.int64),
        "pred_pixels": pred_pixels.astype(np.int64),
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "aAcc": float(tp.sum() / gt_pixels.sum()) if gt_pixels.sum() else math.nan,
    }


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if len(finite) else math.nan


@dataclass
class EvalReport:
    """Everything `eval` prints and saves."""

    output: str
    gt: GroundTruth
    class_names: list[str]
    matrix: np.ndarray
    images: int = 0
    missing: list[str] = field(default_factory=list)  # image ids of ok rows without a label file
    skipped_errors: int = 0
    models: set[tuple[str, str]] = field(default_factory=set)  # (model, config_hash) of the scored rows

    def metrics(self) -> dict[str, Any]:
        result = scores(self.matrix)
        return {
            "output": self.output,
            "gt": self.gt.uri,
            "gt_format": self.gt.format.name,
            "gt_suffix": self.gt.suffix,
            "images": self.images,
            "missing_gt": len(self.missing),
            "missing_gt_examples": [self.gt.path_of(i) for i in self.missing[:MISSING_EXAMPLES]],
            "skipped_error_rows": self.skipped_errors,
            "pixels": int(self.matrix.sum()),
            "classes": len(self.class_names),
            "models": [{"model": m, "config_hash": h} for m, h in sorted(self.models)],
            "mIoU": _json_float(result["mIoU"]),
            "mAcc": _json_float(result["mAcc"]),
            "aAcc": _json_float(result["aAcc"]),
            "per_class": [
                {
                    "id": i,
                    "name": name,
                    "iou": _json_float(result["iou"][i]),
                    "acc": _json_float(result["acc"][i]),
                    "gt_pixels": int(result["gt_pixels"][i]),
                    "pred_pixels": int(result["pred_pixels"][i]),
                }
                for i, name in enumerate(self.class_names)
            ],
        }

    def table(self) -> str:
        """Per-class scores in percent, then the overall line and what was not scored."""
        data = self.metrics()
        width = max(12, *(len(name) for name in self.class_names))
        lines = [f"{'id':>5}  {'class':<{width}} {'IoU':>7} {'Acc':>7} {'GT pixels':>12} {'predicted':>12}"]
        for row in data["per_class"]:
            lines.append(
                f"{row['id']:>5}  {row['name']:<{width}} {_percent(row['iou']):>7} {_percent(row['acc']):>7} "
                f"{row['gt_pixels']:>12} {row['pred_pixels']:>12}"
            )
        lines.append(
            f"\nmIoU {_percent(data['mIoU'])}  mAcc {_percent(data['mAcc'])}  aAcc {_percent(data['aAcc'])}  "
            f"({data['images']} images, {data['pixels']} labelled pixels, {data['gt_format']} ground truth)"
        )
        if self.missing:
            lines.append(
                f"WARNING: {len(self.missing)} ok images have no ground truth and were not scored, e.g. "
                + ", ".join(data["missing_gt_examples"])
            )
        if self.skipped_errors:
            lines.append(f"skipped {self.skipped_errors} error rows (no mask; see `sfp-label show`)")
        if len(self.models) > 1:
            lines.append(f"WARNING: the scored masks come from {len(self.models)} model/config combinations")
        return "\n".join(lines)

    def write(self, directory: Path) -> tuple[Path, Path]:
        """`metrics.json` (scores as fractions, null for absent classes) and `per_class.csv`."""
        directory.mkdir(parents=True, exist_ok=True)
        data = self.metrics()
        metrics_path = directory / METRICS_FILE
        metrics_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        csv_path = directory / PER_CLASS_FILE
        with csv_path.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=["id", "name", "iou", "acc", "gt_pixels", "pred_pixels"])
            writer.writeheader()
            writer.writerows(data["per_class"])
        return metrics_path, csv_path


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}"


def class_names(output: LabelledOutput, vocab_file: Path | None) -> list[str]:
    """Display names in mask-value order: from `--vocab`, else from the run manifests; both must agree in size."""
    recorded = output.class_names()
    if vocab_file is None:
        if recorded is None:
            raise EvalError(f"{output.uri}: no run manifest names the classes; pass --vocab FILE")
        return recorded
    try:
        names = Vocabulary.from_file(vocab_file).class_names
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    if recorded is not None and len(recorded) != len(names):
        raise EvalError(
            f"--vocab {vocab_file} has {len(names)} classes but {output.uri} was labelled with {len(recorded)}"
        )
    return names


def check_classes(gt: GroundTruth, class_names: list[str]) -> None:
    expected = gt.format.classes
    if expected is not None and expected != len(class_names):
        raise EvalError(
            f"{gt.format.name} labels have {expected} classes but the vocabulary has {len(class_names)}: "
            "pass the matching --vocab (jobs/vocab/) or --gt-format"
        )


def evaluate(output: LabelledOutput, gt: GroundTruth, class_names: list[str]) -> EvalReport:
    """Score every ok row of `output` against `gt`; error rows are counted, never scored."""
    check_classes(gt, class_names)
    report = EvalReport(output.uri, gt, class_names, np.zeros((len(class_names),) * 2, np.int64))
    with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
        for row, label_bytes in _rows_with_labels(output, gt, pool, report):
            if label_bytes is None:
                report.missing.append(row["image_id"])
                continue
            report.matrix += _score(row, label_bytes, gt, len(class_names))
            report.images += 1
            report.models.add((row["model"], row["config_hash"]))
    if not report.images:
        how = f"none of the {len(report.missing)} ok images has a label file" if report.missing else "no ok rows"
        examples = ", ".join(gt.path_of(i) for i in report.missing[:MISSING_EXAMPLES])
        raise EvalError(f"nothing to score: {how}" + (f" (looked for {examples})" if examples else ""))
    return report


def _rows_with_labels(
    output: LabelledOutput, gt: GroundTruth, pool: ThreadPoolExecutor, report: EvalReport
) -> Iterator[tuple[dict[str, Any], bytes | None]]:
    """Ok rows batch by batch, each with its label file's bytes (fetched in parallel); error rows counted."""
    for batch in output.batches(COLUMNS):
        rows = batch.to_pylist()
        ok = [row for row in rows if row["status"] == STATUS_OK]
        report.skipped_errors += len(rows) - len(ok)
        yield from zip(ok, pool.map(gt.fetch, [row["image_id"] for row in ok]), strict=True)


def _score(row: dict[str, Any], label_bytes: bytes, gt: GroundTruth, classes: int) -> np.ndarray:
    image_id = row["image_id"]
    if row["mask_png"] is None:
        raise EvalError(f"{image_id}: an ok row without a mask")
    pred = np.asarray(Image.open(io.BytesIO(row["mask_png"]))).astype(np.int64)
    if pred.size and pred.max() >= classes:
        raise EvalError(
            f"{image_id}: predicted class {int(pred.max())} is outside the vocabulary's {classes} classes "
            "(was the output labelled with another vocabulary?)"
        )
    where = gt.path_of(image_id)
    try:
        label = to_class_indices(decode_label_map(label_bytes, where), gt.format, classes, where)
    except LabelMapError as exc:
        raise EvalError(str(exc)) from None
    if label.shape != pred.shape:
        raise EvalError(
            f"{image_id}: mask is {pred.shape[1]}x{pred.shape[0]} but {where} is {label.shape[1]}x{label.shape[0]}"
        )
    return confusion(label, pred, classes)
