"""A run's model actors end with the run, also when it fails and its caller keeps the error: they hold a
CPU or GPU each, and the next run in the same Ray session would wait for them forever."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import GOLDEN_WEIGHTS, TINY_ARCH, output_table, run_label
from PIL import Image

from pipeline import Progress, RunDisplay
from sfp_core import SFPConfig, Vocabulary

pytestmark = pytest.mark.timeout(240)

RUN = {  # the golden tiny model at a small size, a batch and a file every two images
    "vocabulary": Vocabulary([["sky"], ["cat"], ["dog"]]),
    "arch": TINY_ARCH,
    "weights": str(GOLDEN_WEIGHTS),
    "config": SFPConfig(short_side=160),
    "batch_size": 2,
    "rows_per_file": 2,
}


def wait_for_all_cpus(ray, seconds: float = 30.0) -> None:
    """Wait until every CPU of the session's Ray is free again; fails after `seconds`."""
    total, started = ray.cluster_resources()["CPU"], time.monotonic()
    while ray.available_resources().get("CPU", 0.0) < total:
        held = total - ray.available_resources().get("CPU", 0.0)
        assert time.monotonic() - started < seconds, f"{held:g} CPUs still held {seconds:g}s after the run ended"
        time.sleep(0.2)


def write_images(folder: Path, count: int) -> list[str]:
    folder.mkdir()
    gen = np.random.default_rng(5)
    names = [f"im{i:02d}.png" for i in range(count)]
    for name in names:
        Image.fromarray(gen.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / name)
    return names


def test_an_interrupted_run_whose_error_is_kept_leaves_no_actor_and_the_next_run_completes(ray_local, tmp_path):
    names = write_images(tmp_path / "images", 24)

    def interrupt(progress: Progress) -> None:
        if progress.done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as kept:  # the traceback refers to the run's frames and its executor
        run_label(str(tmp_path / "images"), str(tmp_path / "out"), display=RunDisplay(on_progress=interrupt), **RUN)
    wait_for_all_cpus(ray_local)
    assert kept.value.__traceback__ is not None  # still kept while the CPUs came back

    again = run_label(str(tmp_path / "images"), str(tmp_path / "out"), **RUN)
    assert again.ok + again.skipped == 24 and again.error == 0
    assert sorted(output_table(tmp_path / "out", ["image_id"]).column("image_id").to_pylist()) == names
    wait_for_all_cpus(ray_local)


def test_a_run_whose_stage_task_failed_leaves_no_actor_while_its_error_is_kept(ray_local, tmp_path):
    """A task's own error ends the run from inside Ray Data's executor (here: the staging folder became a
    file, so staging the next part fails); that left the actor alive and idle, holding its CPU."""
    write_images(tmp_path / "images", 24)
    staging = tmp_path / "out" / "_sfp" / "staging"

    def break_staging(progress: Progress) -> None:
        if progress.done and staging.is_dir():
            shutil.rmtree(staging)
            staging.write_text("not a folder")

    with pytest.raises(Exception) as kept:
        run_label(str(tmp_path / "images"), str(tmp_path / "out"), display=RunDisplay(on_progress=break_staging), **RUN)
    assert "staging" in str(kept.value) or "directory" in str(kept.value).lower(), kept.value
    wait_for_all_cpus(ray_local)


def test_blocks_are_one_actor_batch_on_cpus_and_sixteen_rows_on_gpus():
    """What the bar and Ctrl-C move by: a batch where a batch is slow (CPU actors); on GPUs, where a batch takes
    milliseconds, Ray Data's cost per block would set the pace, so blocks keep 16 rows."""
    from pipeline.labelling import _rows_per_block
    from pipeline.request import Resources

    assert [_rows_per_block(Resources(batch_size=size)) for size in (1, 2, 8, 16, 64)] == [1, 2, 8, 16, 16]
    assert {_rows_per_block(Resources(batch_size=size, gpus_per_actor=1)) for size in (1, 8, 64)} == {16}
