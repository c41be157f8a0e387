"""Long per-image inputs (a list, a folder) are cut into a bounded number of read blocks before the stages
start, so their first rows do not wait for the whole input to be cut; each entry is still labelled once,
counted, and skipped when a later run finds it labelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import GOLDEN_WEIGHTS, output_table, run_label
from PIL import Image

import pipeline.inputs as inputs
from pipeline import Progress, RunDisplay, Source
from pipeline.inputs import InputReader, KnownIds
from pipeline.inputs.samples import READ_BATCH_ROWS
from pipeline.retry import Retry
from pipeline.storage import Redactor
from sfp_core import SFPConfig, Vocabulary

pytestmark = pytest.mark.timeout(240)

RUN = {
    "vocabulary": Vocabulary([["background"], ["cat"]]),
    "arch": "SFP-Tiny-16",
    "weights": str(GOLDEN_WEIGHTS),
    "config": SFPConfig(short_side=224),
}


def read_blocks_of(listed: Path) -> list[list[str]]:
    """The ids of each block the read stage of `listed` (a list input) emits, run without the other stages."""
    reader = InputReader(Source(uri=str(listed), format="list"), Redactor(), Retry())
    read = reader.read(reader.plan(0.5).materialize(), KnownIds(), None, 0.5)
    return [b.column("image_id").to_pylist() for b in read.iter_batches(batch_size=None, batch_format="pyarrow")]


def test_a_long_list_is_read_in_a_bounded_number_of_blocks_each_entry_once(ray_local, tmp_path, monkeypatch):
    """Ray Data spends driver time on every block it cuts, and a cut made while the stages run holds a whole
    CPU until the stages have taken every block: beside the actor on a two-CPU node nothing was read until
    a 30,000-entry list was cut into 1,875 blocks (5 minutes). Now a list is cut into at most
    `MAX_READ_BLOCKS` blocks, before the stages start; a short one still into blocks of `READ_BATCH_ROWS`."""
    monkeypatch.setattr(inputs, "MAX_READ_BLOCKS", 8)
    entries = [f"missing/{i:05d}.jpg" for i in range(1000)]
    (tmp_path / "long.txt").write_text("\n".join(entries + entries[:10]) + "\n")  # ten listed twice
    blocks = read_blocks_of(tmp_path / "long.txt")
    assert sorted(i for block in blocks for i in block) == entries
    assert len(blocks) <= 8, f"{len(blocks)} read blocks for {len(entries)} entries"

    (tmp_path / "short.txt").write_text("\n".join(entries[:100]) + "\n")
    blocks = read_blocks_of(tmp_path / "short.txt")
    assert sorted(i for block in blocks for i in block) == entries[:100]
    assert max(len(block) for block in blocks) <= READ_BATCH_ROWS  # decoding spreads over many tasks


def write_images(folder: Path, count: int, start: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(start)
    names = [f"img{i:03d}.png" for i in range(start, start + count)]
    for name in names:
        Image.fromarray(gen.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(folder / name)
    return names


def test_long_inputs_read_in_large_blocks_are_labelled_once_counted_and_resumed(ray_local, tmp_path, monkeypatch):
    """Blocks larger than `READ_BATCH_ROWS` (a long input) keep exactly once: a list with ids listed twice,
    a re-run that finds all of them labelled and labels only what was added, a folder input."""
    monkeypatch.setattr(inputs, "MAX_READ_BLOCKS", 3)
    images = tmp_path / "images"
    real = write_images(images, 30)
    missing = [f"missing/{i:03d}.jpg" for i in range(150)]
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join([f"images/{n}" for n in real] + missing + missing[:5]) + "\n")
    output = tmp_path / "out"
    seen: list[Progress] = []
    display = RunDisplay(on_progress=seen.append)

    first = run_label(str(listed), str(output), format="list", retry_errors="none", display=display, **RUN)
    assert (first.ok, first.error, first.skipped, first.total) == (30, 150, 0, 180)
    assert (seen[0].total, seen[0].skipped, seen[-1].done) == (180, 0, 180)
    ids = output_table(output, ["image_id"]).column("image_id").to_pylist()
    assert sorted(ids) == sorted([f"images/{n}" for n in real] + missing)

    added = write_images(images, 4, start=30)
    with listed.open("a") as more:
        more.write("\n".join([f"images/{n}" for n in added] + ["missing/new.jpg"]) + "\n")
    again = run_label(str(listed), str(output), format="list", retry_errors="none", **RUN)
    assert (again.ok, again.error, again.skipped, again.total) == (4, 1, 180, 185)
    ids = output_table(output, ["image_id"]).column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 185

    folder = run_label(str(images), str(tmp_path / "out-folder"), **RUN)
    assert (folder.ok, folder.error, folder.total) == (34, 0, 34)
    ids = output_table(tmp_path / "out-folder", ["image_id"]).column("image_id").to_pylist()
    assert sorted(ids) == sorted(real + added)
