"""bench/gpu_check.sh stays runnable: checked on CPU with --quick (the GPU run is the same script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = pytest.mark.timeout(600)


def test_gpu_check_runs_on_cpu_quick(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu", "--quick"],
        capture_output=True, text=True, env=env, timeout=580, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "device: CPU" in result.stdout and "skipped" in result.stdout  # the CUDA tests skip here
    report = json.loads((ROOT / "bench" / "results" / "gpu_check_cpu_fp32.json").read_text())
    modes = [row["mode"] for row in report["rows"]]
    assert modes[0] == "fused ViT forward (floor)" and any(m.startswith("SFP batched") for m in modes)
    assert all(row["windows_per_s"] > 0 for row in report["rows"])
