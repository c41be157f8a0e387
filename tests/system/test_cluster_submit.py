"""`ray job submit --working-dir . -- sfp-label run jobs/demo.yaml` against a real `ray start --head` cluster.

The cluster is this test's own: started on free ports in its own process
session and stopped by that session's pids (never `ray stop`, which would
stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT, output_table, remote_output_table

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Processes in the given session: everything `ray start` spawned, whatever their process group."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@dataclass
class RayHead:
    dashboard: str
    env: dict[str, str]  # what a client needs: the cluster's auth token, no stale RAY_ADDRESS


@pytest.fixture
def ray_head() -> Iterator[RayHead]:
    """`ray start --head --block` on 127.0.0.1, 2 CPUs and 1 "driver" slot like cluster.yaml's head,
    with token authentication on (its own token, as Ray 2.5x+ clusters are run)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="sfp-ray-", dir="/tmp"))  # short: Ray's socket paths must fit
    dashboard_port = free_port()
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    head_env = env | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # entrypoints find sfp-label
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        f"--port={free_port()}", f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1",
        "--include-dashboard=true", f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=2", '--resources={"driver": 1}',
        "--object-store-memory=300000000", f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    log = temp_dir / "ray-start.log"
    process = subprocess.Popen(
        command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=head_env, start_new_session=True, cwd=temp_dir
    )
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"ray start exited: {log.read_text()[-3000:]}"
            probe = urllib.request.Request(f"{dashboard}/api/version", headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(probe, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"dashboard not up: {log.read_text()[-3000:]}"
            time.sleep(1)
        yield RayHead(dashboard, env)
    finally:
        process.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started ...
        deadline = time.monotonic() + 10
        while session_pids(process.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in session_pids(process.pid):  # ... and whatever is left of this session goes too
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_a_job_file(ray_head, tmp_path):
    output = tmp_path / "labels"
    runtime_env = {
        "excludes": [".git", "tests", "bench", "out"],  # upload only what the job needs
        "env_vars": {"SFP_CACHE_DIR": str(tmp_path / "cache")},
    }
    command = [
        str(BIN / "ray"), "job", "submit", "--address", ray_head.dashboard, "--working-dir", ".",
        "--runtime-env-json", json.dumps(runtime_env), "--entrypoint-resources", '{"driver": 1}', "--",
        "sfp-label", "run", "jobs/demo.yaml", "--no-progress",
        "--set", "model.arch=SFP-Tiny-16", "--set", "model.weights=random",
        "--set", "sfp={short_side: 64, long_side: 128, slide_crop: 64, slide_stride: 32}",
        "--set", f"output.uri={output}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=ray_head.env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "4 ok, 0 error, 0 skipped" in result.stdout  # the entrypoint's own output, streamed back
    assert "succeeded" in result.stdout.lower()
    photos = sorted(path.name for path in (ROOT / "examples" / "images").glob("*.jpg"))
    table = output_table(Path(output), columns=["image_id", "status", "model"])
    assert sorted(table.column("image_id").to_pylist()) == photos
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert set(table.column("model").to_pylist()) == {"SFP-Tiny-16:random"}


def readme_submit_command() -> str:
    """The README's `ray job submit` command (section "On a Ray cluster"), its continued lines joined."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### On a Ray cluster") :]
    block = section[section.index("```bash") + len("```bash") : section.index("```\n", section.index("```bash") + 7)]
    lines = block.strip("\n").splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(("RAY_ADDRESS=", "ray job submit ")))
    command = []
    for line in lines[first:]:
        command.append(line.rstrip().removesuffix("\\").strip())
        if not line.rstrip().endswith("\\"):
            break
    return " ".join(command)


@pytest.fixture
def s3_in_environment(s3_server, monkeypatch):
    """The session's SeaweedFS named by the environment (set before `ray_head` starts, so its nodes see it), as
    README says credentials and endpoints reach a cluster: the session's keys are already there."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server


def test_the_readme_submit_command_runs_as_written(s3_in_environment, ray_head):
    """README's command, text unchanged but for the bucket, the dashboard's port and the two offline
    overrides the job file itself documents (random weights: none can be fetched here; no GPU here): a
    token-auth head with a "driver" slot, credentials and endpoint in the nodes' environment, as README says.
    """
    command = readme_submit_command()
    assert command.startswith("RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . ")
    assert "--entrypoint-resources '{\"driver\": 1}'" in command and command.endswith("jobs/voc21.yaml --no-progress")
    s3_server = s3_in_environment
    bucket = "readme-" + secrets.token_hex(4)
    s3_server.create_bucket(bucket)
    fs = s3_server.filesystem()
    photos = sorted((ROOT / "examples" / "images").glob("*.jpg"))[:2]
    for photo in photos:
        with fs.open_output_stream(f"{bucket}/voc/JPEGImages/{photo.name}") as stream:
            stream.write(photo.read_bytes())
    command = command.replace("http://127.0.0.1:8265", ray_head.dashboard).replace("s3://my-bucket/", f"s3://{bucket}/")
    command += " --set model.weights=random --set resources.gpus_per_actor=0"
    env = ray_head.env | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert f"{len(photos)} ok, 0 error, 0 skipped" in result.stdout
    ids = remote_output_table(fs, f"{bucket}/labels/voc21", ["image_id"]).column("image_id").to_pylist()
    assert sorted(ids) == [photo.name for photo in photos]
