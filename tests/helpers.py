"""Helpers shared by test modules: building label requests the short way, and outputs written by hand."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import SCHEMA, Destination, LabelRequest, ModelChoice, Resources, RunSummary, Source
from pipeline.encode import encode_png

TESTS = Path(__file__).parent
ROOT = TESTS.parent  # the checkout
GOLDEN = TESTS / "data" / "golden"  # what the authors' code outputs for a tiny random CLIP
GOLDEN_WEIGHTS = GOLDEN / "tiny_openai_clip.pt"
TINY_ARCH = "SFP-Tiny-16"  # sfp_core's own test architecture: 12 blocks, width 128, patch 16, QuickGELU

# Each section's fields by their flat keyword; "<section>_storage_options" names each storage_options.
_SECTIONS: dict[str, tuple[type, tuple[str, ...]]] = {
    "input": (
        Source,
        ("format", "extensions", "image_column", "id_column", "fields", "allow_empty", "max_image_bytes"),
    ),
    "output": (
        Destination,
        (
            "mode",
            "confidence",
            "rows_per_file",
            "commit_every_s",
            "storage_retry_s",
            "retry_errors",
            "allow_foreign_files",
        ),
    ),
    "model": (ModelChoice, ("arch", "weights", "weights_sha256")),
    "resources": (Resources, ("actors", "gpus_per_actor", "batch_size", "max_pixels")),
}
_OPTIONS_KEYWORD = {"input": "input", "output": "output", "model": "weights", "resources": "resources"}


def label_request(input_uri: str, output_uri: str, **options: Any) -> LabelRequest:
    """A LabelRequest from flat keywords (`weights=`, `mode=`, `batch_size=`, ...), as the tests write them."""
    sections: dict[str, dict[str, Any]] = {"input": {"uri": input_uri}, "output": {"uri": output_uri}}
    sections.update(model={}, resources={})
    for section, (_, names) in _SECTIONS.items():
        for name in (*names, f"{_OPTIONS_KEYWORD[section]}_storage_options"):
            if options.get(name) is not None:
                sections[section][name.split("_", 1)[1] if name.endswith("storage_options") else name] = options.pop(
                    name
                )
    built = {name: kind(**sections[name]) for name, (kind, _) in _SECTIONS.items()}
    return LabelRequest(**built, **options)


def run_label(input_uri: str, output_uri: str, **options: Any) -> RunSummary:
    """`pipeline.label` of `label_request(...)`; `display=` goes to `label`."""
    from pipeline import label

    display = options.pop("display", None)
    return label(label_request(input_uri, output_uri, **options), display)


NAMES = ["background", "cat", "dog", "car", "tree", "boat"]


def ok_row(image_id: str, mask: np.ndarray, outliers: list[dict] | None = None, uri: str = "") -> dict:
    ids, pixels = np.unique(mask, return_counts=True)
    outliers = outliers or []
    return {
        "image_id": image_id, "uri": uri or f"file:///nowhere/{image_id}", "status": "ok", "error": None,
        "width": mask.shape[1], "height": mask.shape[0], "mask_png": encode_png(mask),
        "class_ids": ids.tolist(), "class_pixels": pixels.tolist(), "mean_confidence": 0.5, "confidence_png": None,
        "outlier_count": len(outliers), "outlier_ratio": 0.01 * len(outliers),
        "score_min": 0.2 if outliers else None, "score_mean": 0.3 if outliers else None,
        "score_max": 0.4 if outliers else None, "windows": 1, "outliers": outliers,
        "model": "SFP-Tiny-16:random", "config_hash": "c0ffee", "run_id": "run1",
    }  # fmt: skip


def error_row(image_id: str) -> dict:
    row = {name: None for name in SCHEMA.names}
    row.update(image_id=image_id, uri=f"file:///nowhere/{image_id}", status="error", error="truncated: test")
    row.update(model="SFP-Tiny-16:random", config_hash="c0ffee", run_id="run1")
    return row


def write_output(root: Path, files: list[list[dict]], class_names: list[str] | None = NAMES) -> Path:
    """An output folder as the pipeline commits it: a data folder of Parquet files, the pointer naming it
    and the classes (none when `class_names` is None), and a run manifest."""
    folder = root / "data-run1"
    folder.mkdir(parents=True, exist_ok=True)
    for number, rows in enumerate(files):
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), folder / f"part-{number}.parquet")
    if class_names is not None:
        (root / "_sfp" / "runs").mkdir(parents=True)
        manifest = {"run_id": "run1", "started_at": "2026-01-01T00:00:00Z", "model": {"arch": "SFP-Tiny-16"}}
        manifest["vocabulary"] = {"classes": [[name] for name in class_names]}
        (root / "_sfp" / "runs" / "run1.json").write_text(json.dumps(manifest))
        identity = {"arch": "SFP-Tiny-16", "weights": "random", "classes": [[name] for name in class_names]}
        pointer = {"data": "data-run1", "identity": identity, "created_by": "run1"}
        (root / "_sfp" / "current.json").write_text(json.dumps(pointer))
    return root


def data_dir(output: Path) -> Path:
    """The output's current data folder, as the pointer names it (read here as plain JSON)."""
    return output / json.loads((output / "_sfp" / "current.json").read_text())["data"]


def data_paths(output: Path) -> list[Path]:
    """The current data files, sorted."""
    return sorted(data_dir(output).glob("part-*.parquet"))


def output_table(output: Path, columns: list[str] | None = None) -> pa.Table:
    """Every current row, read with pyarrow from the data folder the pointer names."""
    import pyarrow.dataset as pads

    return pads.dataset(str(data_dir(output)), format="parquet").to_table(columns=columns)


def remote_output_table(fs, prefix: str, columns: list[str] | None = None) -> pa.Table:
    """`output_table` for an output on a pyarrow filesystem (S3): the pointer read as plain JSON first."""
    import pyarrow.dataset as pads

    with fs.open_input_stream(f"{prefix}/_sfp/current.json") as stream:
        folder = json.loads(stream.read())["data"]
    return pads.dataset(f"{prefix}/{folder}", filesystem=fs, format="parquet").to_table(columns=columns)


_SLOW_COMMITS = """
import time as _time
import pipeline.sink as _sink
_launch = _sink.PartCommitter._launch
def _slow_launch(self, *args, **kwargs):
    launched = self._launched
    _launch(self, *args, **kwargs)
    if self._launched != launched:
        _time.sleep(0.5)
_sink.PartCommitter._launch = _slow_launch
"""


def kill_after_first_commit(driver: str, output: Path, ray_address: str, patience_s: float = 150) -> None:
    """Run `driver` (Python source that calls `label`) in its own process and SIGKILL it once a data file
    is committed under `output`."""
    kill_after_commits(driver, lambda: len(list(output.glob("data-*/part-*.parquet"))), 1, ray_address, patience_s)


def kill_after_commits(
    driver: str, committed: Callable[[], int], at_least: int, ray_address: str, patience_s: float = 150
) -> None:
    """Run `driver` in its own process and SIGKILL it once `committed()` (data files there) reaches `at_least`.

    Each round of commits the driver starts is followed by a pause, as on slow storage: on a fast machine
    the driver may otherwise commit every row between two looks at the output, and the kill would land
    after the run instead of midway. Returns once the files committed have stopped changing.
    """
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "RAY_ADDRESS": ray_address}
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_COMMITS + driver], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + patience_s
    while committed() < at_least:
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the driver committed nothing in time"
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    # A merge the driver started may still finish in a worker until Ray has reaped the dead driver's tasks
    # (seconds, more on a loaded machine): wait until the committed files stop changing, so that what the
    # test reads as "committed by the killed run" is what the next run will find.
    seen, quiet_since = committed(), time.monotonic()
    while time.monotonic() - quiet_since < 3 and time.monotonic() < deadline + 60:
        time.sleep(0.2)
        now = committed()
        if now != seen:
            seen, quiet_since = now, time.monotonic()
