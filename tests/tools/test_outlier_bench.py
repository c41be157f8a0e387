"""bench/outliers.py smoke run: two tiny generated images through the tiny random ViT, a plot and its numbers."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from helpers import ROOT
from PIL import Image

from sfp_core import SFPConfig, prepare_image
from sfp_core.windows import window_grid

BENCH = ROOT / "bench" / "outliers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_outliers", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_counts_and_norms_per_block_for_every_detector(bench, tmp_path, rng):
    folder = tmp_path / "images"
    folder.mkdir()
    shapes = [(40, 64), (72, 48)]
    for i, shape in enumerate(shapes):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "plot" / "outliers.png"
    result = bench.main([str(folder), "--out", str(out)])

    config = SFPConfig()
    windows = sum(
        len(window_grid(*prepare_image(np.zeros((*s, 3), np.uint8), 336, 2048, 16).shape[:2], 224, 112)) for s in shapes
    )
    assert (result["images"], result["windows"], result["blocks"]) == (2, windows, list(range(1, 12)))
    assert json.loads(out.with_suffix(".json").read_text()) == result
    for method in ("som", "l2", "lof"):
        series = result["methods"][method]
        assert all(len(values) == 11 for values in series.values())
        assert all(c > 0 for c in series["outliers_per_window"])
        assert all(v > 0 for v in series["other_norm"])
    l2 = result["methods"]["l2"]
    assert l2["outliers_per_window"] == [float(config.top_k)] * 11  # the top_k largest norms, always top_k
    assert all(o >= r for o, r in zip(l2["outlier_norm"], l2["other_norm"], strict=True))
    assert all(c <= config.top_k for c in result["methods"]["som"]["outliers_per_window"])
    with Image.open(out) as plot:
        assert plot.format == "PNG" and plot.size[0] > 600
