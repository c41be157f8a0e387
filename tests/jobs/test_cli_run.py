"""`sfp-label run` end to end on this machine with a local Ray: the README's demo job, then show, export, re-run.

Partial failure (exit 3) and re-runs that label only new images are covered on a
two-node cluster in test_cluster_multinode.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import ROOT, output_table
from PIL import Image

from jobs.cli.exitcodes import ExitCode
from sfp_core import SFPConfig

# What Ray's C++ core worker prints: `[2026-12-07 17:39:26,953 E 24579 24579] core_worker.cc:2465: ...`
RAY_LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [A-Z] \d+ \d+\] \S+\.cc:\d+:", re.MULTILINE)
SFP_LABEL = str(Path(sys.executable).parent / "sfp-label")
DEMO_PHOTOS = sorted(path.name for path in (ROOT / "examples" / "images").glob("*.jpg"))
DESIGN_COLUMNS = [
    "image_id", "uri", "status", "error", "width", "height", "mask_png", "class_ids", "class_pixels",
    "mean_confidence", "confidence_png", "outlier_count", "outliers", "model", "config_hash", "run_id",
]  # fmt: skip


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([SFP_LABEL, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def rows(output: Path) -> list[dict]:
    return output_table(output).to_pylist()


def decode(png: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(png)))


def test_demo_job_as_the_readme_runs_it(tmp_path):
    """`sfp-label run jobs/demo.yaml --set model.weights=random` from a checkout, then show, export, re-run."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / "jobs").mkdir()
    shutil.copy(ROOT / "jobs" / "demo.yaml", tmp_path / "jobs")

    first = cli("run", "jobs/demo.yaml", "--set", "model.weights=random", cwd=tmp_path)
    assert first.returncode == ExitCode.OK, first.stderr[-3000:]
    assert not RAY_LOG_LINE.search(first.stderr), first.stderr  # Ray's own log lines stay in its log files
    assert f"{len(DEMO_PHOTOS)} ok, 0 error, 0 skipped" in first.stdout

    output = tmp_path / "out" / "demo"
    table = output_table(output)
    assert set(DESIGN_COLUMNS) <= set(table.column_names)
    written = table.to_pylist()
    assert sorted(row["image_id"] for row in written) == DEMO_PHOTOS
    manifests = [json.loads(path.read_text()) for path in (output / "_sfp" / "runs").glob("*.json")]
    assert len(manifests) == 1 and manifests[0]["status"] == "succeeded"
    classes = manifests[0]["vocabulary"]["classes"]
    assert classes[2] == ["cat"]
    for row in written:
        photo = Image.open(tmp_path / "examples" / "images" / row["image_id"])
        assert row["status"] == "ok" and row["error"] is None
        assert (row["width"], row["height"]) == photo.size
        mask = decode(row["mask_png"])
        assert mask.shape == (photo.height, photo.width) and mask.dtype == np.uint8
        present, areas = np.unique(mask, return_counts=True)
        assert row["class_ids"] == present.tolist() and row["class_pixels"] == areas.tolist()
        assert max(row["class_ids"]) < len(classes)
        assert decode(row["confidence_png"]).shape == mask.shape  # output.confidence: true
        assert 0.0 < row["mean_confidence"] <= 1.0
        assert row["outlier_count"] == len(row["outliers"])
        assert (row["model"], row["config_hash"]) == ("ViT-B-16:random", SFPConfig().config_hash())
        assert row["run_id"] == manifests[0]["run_id"]

    shown = cli("show", "out/demo", cwd=tmp_path)
    assert shown.returncode == ExitCode.OK and f"{len(DEMO_PHOTOS)} images, {len(DEMO_PHOTOS)} ok" in shown.stdout
    exported = cli("export", "out/demo", "out/demo-masks", "--ignore-below", "0.5", cwd=tmp_path)
    assert exported.returncode == ExitCode.OK, exported.stderr
    assert len(list((tmp_path / "out" / "demo-masks" / "SegmentationClass").glob("*.png"))) == len(DEMO_PHOTOS)

    again = cli("run", "jobs/demo.yaml", "--set", "model.weights=random", "--no-progress", cwd=tmp_path)
    assert again.returncode == ExitCode.OK, again.stderr[-3000:]
    assert f"0 ok, 0 error, {len(DEMO_PHOTOS)} skipped" in again.stdout
    assert len(rows(output)) == len(DEMO_PHOTOS)
