"""Stopping a run the way schedulers do: SIGTERM behaves like Ctrl-C (work kept, lease released, exit 143),
and a local Ray listens on loopback only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from helpers import ROOT, output_table
from PIL import Image

from jobs.cli.exitcodes import ExitCode

SFP_LABEL = str(Path(sys.executable).parent / "sfp-label")


def job(tmp_path: Path, images: int) -> Path:
    source = tmp_path / "images"
    source.mkdir()
    for index in range(images):
        pixels = np.random.default_rng(index).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(source / f"img_{index:03d}.png")
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(f"""
        input: {{uri: '{source}'}}
        output: {{uri: '{tmp_path / "out"}', rows_per_file: 2}}
        model: {{arch: SFP-Tiny-16, weights: random}}
        vocabulary: {{classes: [cat, dog]}}
        sfp: {{short_side: 448}}
        resources: {{batch_size: 2}}
        """)
    )
    return path


def test_sigterm_keeps_finished_work_releases_the_lease_and_exits_143(tmp_path):
    path = job(tmp_path, 40)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen(
        [SFP_LABEL, "run", str(path), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    output = tmp_path / "out"
    deadline = time.monotonic() + 240
    while not list(output.glob("data-*/part-*.parquet")):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "nothing was committed in time"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == ExitCode.TERMINATED, err[-3000:]
    assert "terminated" in err and "Traceback" not in err
    leases = sorted((output / "_sfp" / "lease").glob("*.json"))
    assert json.loads(leases[-1].read_text())["released"] is True  # the next run need not wait for a TTL
    kept = output_table(output).column("image_id").to_pylist()
    assert 0 < len(kept) < 40 and len(set(kept)) == len(kept)
    again = subprocess.run(
        [SFP_LABEL, "run", str(path), "--no-progress"], env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    ids = output_table(output).column("image_id").to_pylist()
    assert sorted(ids) == [f"img_{i:03d}.png" for i in range(40)]  # exactly once


def test_a_local_ray_listens_on_loopback_only():
    script = "import ray; from pipeline import ensure_ray; ensure_ray(); print(ray.nodes()[0]['NodeManagerAddress'])"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "127.0.0.1"


def test_sigterm_at_any_moment_exits_143_with_one_line(tmp_path):
    """Before Ray starts (job loading, preflight), while `ray.init` runs (Ray's own SIGTERM handler is in
    place then), and once it labels: always 143 and the terminated line, never 15, -6 or a traceback."""
    path = job(tmp_path, 12)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for delay in (0.5, 2.0, 4.0, 6.0, 9.0):
        process = subprocess.Popen(
            [SFP_LABEL, "run", str(path), "--no-progress"], env=env, stderr=subprocess.PIPE, text=True
        )
        time.sleep(delay)
        if process.poll() is not None:
            continue  # already finished on a fast machine: nothing to stop
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=90)
        took = time.monotonic() - sent
        assert process.returncode in (ExitCode.TERMINATED, ExitCode.OK), (delay, process.returncode, err[-3000:])
        if process.returncode == ExitCode.TERMINATED:
            assert "terminated" in err and "Traceback" not in err, (delay, err[-3000:])
        print(f"SIGTERM {delay:.1f}s after start: exit {process.returncode} {took:.1f}s after the signal")


def test_a_sigterm_that_rays_handler_drops_during_init_still_reaches_ours():
    """Ray's handler exits by raising SystemExit, which Python prints and drops when the signal lands in a
    fork hook; the run must still stop. A stand-in for `ray.init` puts in such a handler and is signalled."""
    from pipeline.ray_session import _sigterm_kept_through_init

    class Stopped(Exception):
        pass

    def ours(signum, frame):
        raise Stopped()

    def dropping(signum, frame):
        pass  # what Ray's sys.exit(15) amounts to when it is raised inside a fork hook

    earlier = signal.signal(signal.SIGTERM, ours)
    try:
        try:
            with _sigterm_kept_through_init():
                signal.signal(signal.SIGTERM, dropping)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.1)
            for _ in range(100):  # the handler runs at the next bytecode boundary
                time.sleep(0.01)
        except Stopped:
            assert signal.getsignal(signal.SIGTERM) is ours
        else:
            raise AssertionError("the SIGTERM received during init was lost")
    finally:
        signal.signal(signal.SIGTERM, earlier)


def test_no_sigterm_during_init_sends_none():
    from pipeline.ray_session import _sigterm_kept_through_init

    calls = []
    earlier = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with _sigterm_kept_through_init():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(0.1)
        assert calls == [] and signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, earlier)
