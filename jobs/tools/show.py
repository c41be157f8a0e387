"""`sfp-label show`: what a finished output holds, computed from its rows in one streaming pass.

Counts by status, the commonest errors, each class's share of labelled
pixels and how many images contain it, and the outlier statistics SFP
records (per-image counts, scores, where in the window grid they sit).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import RUN_RUNNING, RUN_SUCCEEDED, STATUS_OK, LabelledOutput, Manifest, writing_job

COLUMNS = ("status", "error", "class_ids", "class_pixels", "mean_confidence", "outlier_count", "outliers")
TOP = 5


@dataclass
class _Tally:
    """Running sums over row batches (nothing per image is kept but the outlier counts)."""

    status: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    class_images: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    positions: Counter[tuple[int, int]] = field(default_factory=Counter)
    outlier_counts: list[np.ndarray] = field(default_factory=list)
    confidence_sum: float = 0.0
    confidence_n: int = 0
    score_sum: float = 0.0
    score_n: int = 0
    score_max: float | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        table = pa.Table.from_batches([batch])
        self.status.update(_value_counts(table["status"]))
        ok = table.filter(pc.equal(table["status"], STATUS_OK))
        errors = table.filter(pc.not_equal(table["status"], STATUS_OK))["error"]
        self.errors.update(_value_counts(pc.fill_null(errors, "(no message)")))
        ids = _flat(ok["class_ids"])
        self.class_pixels = _add_at(self.class_pixels, ids, _flat(ok["class_pixels"]))
        self.class_images = _add_at(self.class_images, ids, np.ones(len(ids), np.int64))
        confidence = ok["mean_confidence"].drop_null()
        self.confidence_sum += float(pc.sum(confidence).as_py() or 0.0)
        self.confidence_n += len(confidence)
        self.outlier_counts.append(ok["outlier_count"].fill_null(0).to_numpy())
        outliers = pc.list_flatten(ok["outliers"])
        scores = pc.struct_field(outliers, "score").drop_null()
        if len(scores):
            self.score_sum += float(pc.sum(scores).as_py())
            self.score_n += len(scores)
            batch_max = float(pc.max(scores).as_py())
            self.score_max = batch_max if self.score_max is None else max(self.score_max, batch_max)
        rows = pc.struct_field(outliers, "row").to_numpy(zero_copy_only=False).astype(np.int64)
        cols = pc.struct_field(outliers, "col").to_numpy(zero_copy_only=False).astype(np.int64)
        if len(rows):
            pairs, counts = np.unique(np.stack([rows, cols], axis=1), axis=0, return_counts=True)
            self.positions.update(dict(zip(map(tuple, pairs.tolist()), counts.tolist(), strict=True)))


def _value_counts(column: pa.ChunkedArray) -> dict[Any, int]:
    if not len(column):
        return {}
    counts = pc.value_counts(column)
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True))


def _flat(column: pa.ChunkedArray) -> np.ndarray:
    return pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int64)


def _add_at(total: np.ndarray, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`total[ids] += values`, growing `total` to fit the largest id."""
    if len(ids) and ids.max() >= len(total):
        total = np.concatenate([total, np.zeros(int(ids.max()) + 1 - len(total), np.int64)])
    np.add.at(total, ids, values)
    return total


def summarize(output: LabelledOutput) -> dict[str, Any]:
    """Everything `show` prints, as plain data (also what `show --json` emits)."""
    tally = _Tally()
    for batch in output.batches(COLUMNS):
        tally.add(batch)
    names = output.class_names()
    total_pixels = int(tally.class_pixels.sum())
    present = np.flatnonzero(tally.class_images).tolist()
    per_image = np.concatenate(tally.outlier_counts) if tally.outlier_counts else np.zeros(0, np.int64)
    images = sum(tally.status.values())
    writing = writing_job(output.location)
    return {
        "output": output.uri,
        "images": images,
        "ok": tally.status.get(STATUS_OK, 0),
        "error": images - tally.status.get(STATUS_OK, 0),
        "top_errors": [{"error": message, "images": n} for message, n in tally.errors.most_common(TOP)],
        "mean_confidence": tally.confidence_sum / tally.confidence_n if tally.confidence_n else None,
        "classes": [
            {
                "id": class_id,
                "name": names[class_id] if names and class_id < len(names) else None,
                "pixel_share": int(tally.class_pixels[class_id]) / total_pixels if total_pixels else 0.0,
                "images": int(tally.class_images[class_id]),
            }
            for class_id in present
        ],
        "vocabulary_size": len(names) if names else None,
        "outliers": {
            "total": int(per_image.sum()),
            "images_with_outliers": int((per_image > 0).sum()),
            "per_image": _spread(per_image),
            "score_mean": tally.score_sum / tally.score_n if tally.score_n else None,
            "score_max": tally.score_max,
            "top_positions": [{"row": r, "col": c, "count": n} for (r, c), n in tally.positions.most_common(TOP)],
        },
        "runs": [_run_line(manifest, writing) for manifest in output.manifests],
    }


def _spread(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    low, median, p95, high = np.percentile(values, [0, 50, 95, 100]).tolist()
    return {"min": low, "median": median, "p95": p95, "max": high, "mean": float(values.mean())}


def _run_line(manifest: Manifest, writing_job: str | None) -> dict[str, Any]:
    counts = manifest.counts
    return {
        "run_id": manifest.run_id,
        "status": manifest.shown_status(writing_job),
        "started_at": manifest.started_at,
        "ok": counts.ok if counts else None,
        "error": counts.error if counts else None,
        "skipped": counts.skipped if counts else None,
        "found": counts.total if counts else None,
        "error_message": manifest.error,
        "images_per_second": manifest.images_per_second,
        "model": f"{manifest.model.arch or None}:{manifest.model.weights or None}",
        "config_hash": manifest.config_hash,
    }


def _render_run(run: dict[str, Any]) -> str:
    head = f"  {run['run_id']}  {run['status']:<9} {run['started_at']}  "
    if run["status"] != RUN_SUCCEEDED:
        why = run["error_message"] or ("still running" if run["status"] == RUN_RUNNING else "no error recorded")
        return head + why
    if run["found"] == 0:
        return head + f"found no images  {run['model']}"
    speed = f"{run['images_per_second']:.2f} img/s" if run["images_per_second"] is not None else "-"
    counts = f"ok {run['ok']}  error {run['error']}  skipped {run['skipped']}"
    return head + f"{counts}  {speed}  {run['model']}"


def error_rows(output: LabelledOutput) -> Iterator[tuple[str, str]]:
    """(image_id, reason) of every error row, streamed: what `show --errors` lists."""
    for batch in output.batches(("image_id", "status", "error")):
        table = pa.Table.from_batches([batch]).filter(pc.not_equal(batch.column("status"), STATUS_OK))
        yield from zip(table["image_id"].to_pylist(), table["error"].fill_null("(no message)").to_pylist(), strict=True)


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable report."""
    lines = [
        f"{summary['output']}: {summary['images']} images, {summary['ok']} ok, {summary['error']} error",
    ]
    if summary["mean_confidence"] is not None:
        lines.append(f"mean confidence {summary['mean_confidence']:.3f}")
    if summary["runs"]:
        lines.append(f"\nruns ({len(summary['runs'])}):")
        lines += [_render_run(run) for run in summary["runs"]]
    if summary["top_errors"]:
        lines.append("\ncommonest errors:")
        lines += [f"  {item['images']:>8}  {item['error']}" for item in summary["top_errors"]]
    if summary["classes"]:
        size = summary["vocabulary_size"]
        lines.append(f"\nclasses present: {len(summary['classes'])}" + (f" of {size}" if size else ""))
        lines.append(f"  {'id':>5}  {'name':<24} {'pixels':>8} {'images':>8}")
        for item in sorted(summary["classes"], key=lambda c: -c["pixel_share"]):
            name = item["name"] if item["name"] is not None else "?"
            lines.append(f"  {item['id']:>5}  {name:<24} {item['pixel_share']:>7.1%} {item['images']:>8}")
    outliers = summary["outliers"]
    lines.append(f"\noutliers: {outliers['total']} in {outliers['images_with_outliers']} images")
    if outliers["per_image"]:
        spread = outliers["per_image"]
        lines.append(
            "  per image: mean {mean:.1f}, min {min:.0f}, median {median:.0f}, p95 {p95:.0f}, max {max:.0f}".format(
                **spread
            )
        )
    if outliers["score_mean"] is not None:
        lines.append(f"  score: mean {outliers['score_mean']:.3f}, max {outliers['score_max']:.3f}")
    if outliers["top_positions"]:
        where = ", ".join(f"({p['row']},{p['col']}) x{p['count']}" for p in outliers["top_positions"])
        lines.append(f"  commonest grid positions (row,col): {where}")
    return "\n".join(lines)
