"""A run as a person lives it, through the real `sfp-label`: a live bar on a terminal, progress lines in
logs, the summary once, and Ctrl-C keeping what is finished."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, output_table
from PIL import Image

from jobs.cli.exitcodes import ExitCode

pytestmark = pytest.mark.timeout(400)

SFP_LABEL = str(Path(sys.executable).parent / "sfp-label")


def corpus(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True)
    names = [f"img_{i:03d}.png" for i in range(count)]
    for i, name in enumerate(names):
        pixels = np.random.default_rng(i).integers(0, 255, (96, 128, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
    return names


def job(tmp_path: Path, source: Path, output: Path, extra_output: str = "") -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(f"""
        input: {{uri: '{source}'}}
        output: {{uri: '{output}'{extra_output}}}
        model: {{arch: SFP-Tiny-16, weights: random}}
        vocabulary: {{classes: [background, cat, dog]}}
        resources: {{batch_size: 2}}
        sfp: {{short_side: 224}}
        """)
    )
    return path


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def hearing_ctrl_c() -> None:
    """Run in the child before exec: SIGINT back to its default, which Python turns into KeyboardInterrupt.
    A suite started in the background by a script (`pytest ... &`) inherits SIGINT ignored, and an ignored
    signal stays ignored across exec: the run would never hear the Ctrl-C the test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_bar(leader: int, process: subprocess.Popen, until: Callable[[str], bool], deadline: float) -> str:
    """What the run drew on its terminal, read until `until(text)` holds, the run ends or the deadline."""
    seen = b""
    while time.monotonic() < deadline and not until(seen.decode(errors="replace")):
        ready, _, _ = select.select([leader], [], [], 1.0)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        seen += chunk
    return seen.decode(errors="replace")


def test_a_terminal_gets_one_live_bar_and_the_summary_once(tmp_path):
    names = corpus(tmp_path / "in", 12)
    path = job(tmp_path, tmp_path / "in", tmp_path / "out")
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [SFP_LABEL, "run", str(path)], stdin=follower, stdout=follower, stderr=follower, env=environment()
    )
    os.close(follower)
    text = read_bar(leader, process, lambda _: False, time.monotonic() + 300)
    process.wait(timeout=60)
    os.close(leader)
    assert process.returncode == ExitCode.OK, text[-3000:]
    frames = [frame for frame in text.split("\r") if f"/{len(names)} images" in frame]
    assert len(frames) >= 2 and "ETA" in frames[0], text[-3000:]  # the bar redrew itself as rows landed
    assert f"{len(names)}/{len(names)} images ({len(names)} ok, 0 error)" in text
    assert text.count(f"{len(names)} ok, 0 error, 0 skipped of {len(names)} images") == 1  # the summary, once
    assert "manifest: file://" in text
    assert "Traceback" not in text and "Deprecat" not in text


def test_logs_get_a_progress_line_every_few_seconds(tmp_path):
    names = corpus(tmp_path / "in", 10)
    path = job(tmp_path, tmp_path / "in", tmp_path / "out")
    result = subprocess.run(
        [SFP_LABEL, "run", str(path), "--progress-every", "0.5"],
        capture_output=True, text=True, env=environment(), timeout=300,
    )  # fmt: skip
    assert result.returncode == ExitCode.OK, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("progress: ")]
    assert lines and lines[-1].startswith(f"progress: {len(names)}/{len(names)} images"), result.stderr[-3000:]
    assert "\r" not in result.stderr  # no bar drawn into a log
    assert result.stdout.count(" skipped of ") == 1 and result.stderr.count(" skipped of ") == 0


def test_ctrl_c_commits_what_is_finished_and_the_next_run_does_the_rest(tmp_path):
    """rows_per_file and commit_every_s far above the run: only the interruption can have committed rows."""
    names = corpus(tmp_path / "in", 60)
    output = tmp_path / "out"
    path = job(tmp_path, tmp_path / "in", output, ", rows_per_file: 100000, commit_every_s: 3600")
    process = subprocess.Popen(
        [SFP_LABEL, "run", str(path), "--progress-every", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(), preexec_fn=hearing_ctrl_c,
    )  # fmt: skip
    done = 0
    for line in process.stderr:
        if line.startswith("progress: "):
            done = int(line.split()[1].split("/")[0])
            if done >= 4:
                break
    assert done >= 4, "the run never got going"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == ExitCode.INTERRUPTED, err[-3000:]
    assert "interrupted" in err and "Traceback" not in err
    kept = output_table(output).column("image_id").to_pylist()
    assert done <= len(kept) < len(names) and len(set(kept)) == len(kept)

    again = subprocess.run([SFP_LABEL, "run", str(path), "--no-progress"], capture_output=True, text=True,
                           env=environment(), timeout=300)  # fmt: skip
    assert again.returncode == ExitCode.OK, again.stderr[-3000:]
    assert f"{len(names) - len(kept)} ok, 0 error, {len(kept)} skipped" in again.stdout
    assert sorted(output_table(output).column("image_id").to_pylist()) == names  # exactly once


@pytest.mark.timeout(1200)
def test_the_demo_job_bar_moves_after_each_batch_and_ctrl_c_keeps_them(tmp_path):
    """The README's demo job with ViT-B-16 (random weights, batches of 2) on 12 photos: the bar counts every
    batch as it finishes, and Ctrl-C then keeps every row it counted (commits far off: only the interruption
    can have committed them); the next run labels only the rest. Issue 21 item 2: with a slow model the
    bar sat at 0 until the end and Ctrl-C kept nothing. `sfp.short_side` 224 keeps it near a minute on two
    idle cores (ViT-B-16 starts twice)."""
    photos = tmp_path / "examples" / "images"
    photos.mkdir(parents=True)
    names = []
    for copy in range(3):
        for photo in sorted((ROOT / "examples" / "images").glob("*.jpg")):
            names.append(f"{photo.stem}_{copy}.jpg")
            shutil.copy(photo, photos / names[-1])
    (tmp_path / "jobs").mkdir()
    shutil.copy(ROOT / "jobs" / "demo.yaml", tmp_path / "jobs")
    command = [SFP_LABEL, "run", "jobs/demo.yaml", "--set", "model.weights=random", "--set", "sfp.short_side=224"]
    command += ["--set", "output.rows_per_file=100000", "--set", "output.commit_every_s=3600"]
    total = len(names)

    def counts(text: str) -> list[int]:
        return sorted({int(done) for done in re.findall(rf"(\d+)/{total} images", text)} - {0, total})

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        command, stdin=follower, stdout=follower, stderr=follower, cwd=tmp_path, env=environment(),
        start_new_session=True,  # its own process group, which Ctrl-C reaches as a terminal sends it
        preexec_fn=hearing_ctrl_c,
    )  # fmt: skip
    os.close(follower)
    try:
        text = read_bar(leader, process, lambda text: len(counts(text)) >= 2, time.monotonic() + 900)
        moved = counts(text)
        assert len(moved) >= 2, f"the bar did not move twice before the end: {text[-3000:]}"
        os.killpg(process.pid, signal.SIGINT)
        text += read_bar(leader, process, lambda _: False, time.monotonic() + 300)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    assert process.returncode == ExitCode.INTERRUPTED, text[-3000:]
    assert "interrupted" in text and "Traceback" not in text
    kept = output_table(tmp_path / "out" / "demo").column("image_id").to_pylist()
    assert moved[-1] <= len(kept) < total and len(set(kept)) == len(kept), (moved, kept)

    again = subprocess.run([*command, "--no-progress"], capture_output=True, text=True, cwd=tmp_path,
                           env=environment(), timeout=600)  # fmt: skip
    assert again.returncode == ExitCode.OK, again.stderr[-3000:]
    assert f"{total - len(kept)} ok, 0 error, {len(kept)} skipped" in again.stdout
    assert sorted(output_table(tmp_path / "out" / "demo").column("image_id").to_pylist()) == sorted(names)
