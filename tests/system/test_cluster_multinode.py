"""Two Ray nodes on this machine, output on S3 (SeaweedFS): nothing in a run assumes one machine.

The head node has no CPUs, so the SFP actor (and every task) runs on the
other node, the one the driver is not on. Each node has its own model cache
(SFP_CACHE_DIR differs per node), the weights come from S3, and the driver
runs in an empty folder that must stay empty.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, remote_output_table
from PIL import Image

from jobs.cli.exitcodes import ExitCode

SFP_LABEL = str(Path(sys.executable).parent / "sfp-label")
BUCKET = "multinode"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_nodes(tmp_path):
    """A head with no CPUs (the driver's node) and a 2-CPU worker node, each with its own model cache."""
    from ray.cluster_utils import Cluster

    caches = {"head": tmp_path / "head-cache", "worker": tmp_path / "worker-cache"}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "dashboard_agent_listen_port": free_port(),
            "env_vars": {"SFP_CACHE_DIR": str(caches["head"])},
        },
    )
    try:
        cluster.add_node(
            num_cpus=2,
            object_store_memory=300 * 1024 * 1024,
            dashboard_agent_listen_port=free_port(),
            env_vars={"SFP_CACHE_DIR": str(caches["worker"])},
        )
        cluster.wait_for_nodes(timeout=120)
        yield cluster, caches
    finally:
        cluster.shutdown()


def put(fs, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_two_node_cluster_labels_s3_to_s3(two_nodes, s3_server, tmp_path):
    cluster, caches = two_nodes
    s3 = s3_server.filesystem()
    s3_server.create_bucket(BUCKET)
    for index, name in enumerate(["a.png", "b.png", "deep/c.png"]):
        put(s3, f"{BUCKET}/in/{name}", png(index))
    put(s3, f"{BUCKET}/in/broken.png", b"not a png")
    put(s3, f"{BUCKET}/models/tiny.pt", (ROOT / "tests" / "data" / "golden" / "tiny_openai_clip.pt").read_bytes())

    options = f"{{endpoint_url: '{s3_server.endpoint_url}', region: us-east-1}}"  # credentials: environment only
    job = tmp_path / "multinode.yaml"
    job.write_text(
        textwrap.dedent(f"""
        input: {{uri: 's3://{BUCKET}/in', extensions: [png], storage_options: {options}}}
        output: {{uri: 's3://{BUCKET}/out', confidence: true, storage_options: {options}}}
        model: {{arch: SFP-Tiny-16, weights: 's3://{BUCKET}/models/tiny.pt', storage_options: {options}}}
        vocabulary: {{classes: [[background, sky], [cat], [dog]]}}
        sfp: {{short_side: 32, long_side: 64, slide_crop: 32, slide_stride: 16}}
        resources: {{actors: 1, batch_size: 2}}
        """)
    )
    driver_cwd = tmp_path / "driver-cwd"
    driver_cwd.mkdir()
    env = dict(os.environ, RAY_ADDRESS=cluster.address, SFP_CACHE_DIR=str(caches["head"]))

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [SFP_LABEL, "run", str(job), "--no-progress", *args]
        return subprocess.run(command, cwd=driver_cwd, env=env, capture_output=True, text=True, timeout=600)

    first = run()
    assert first.returncode == ExitCode.PARTIAL, first.stderr[-4000:]
    assert "3 ok, 1 error, 0 skipped" in first.stdout
    table = remote_output_table(s3, f"{BUCKET}/out", columns=["image_id", "status"])
    assert sorted(table.column("image_id").to_pylist()) == ["a.png", "b.png", "broken.png", "deep/c.png"]
    assert table.column("status").to_pylist().count("ok") == 3

    # The model was fetched and cached by the worker node only: the driver's node never loaded it.
    assert list(caches["worker"].glob("weights/*/tiny.pt"))
    assert not caches["head"].exists()
    assert list(driver_cwd.iterdir()) == []  # no temp files or output next to the driver
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert secret not in first.stdout + first.stderr

    # The next scheduled run labels only what arrived since, and an overlapping second start of the
    # same job (a slow cron tick) cannot write it too: one run labels it, the other finds the lease held.
    put(s3, f"{BUCKET}/in/new.png", png(9))
    command = [SFP_LABEL, "run", str(job), "--no-progress"]
    racers = [
        subprocess.Popen(command, cwd=driver_cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    finished = [(racer.communicate(timeout=600), racer.returncode) for racer in racers]
    codes = sorted(code for _, code in finished)
    report = "\n".join(out + err[-3000:] for (out, err), _ in finished)
    assert codes in ([ExitCode.OK, ExitCode.BUSY], [ExitCode.OK, ExitCode.OK]), report
    assert sum("1 ok, 0 error, 4 skipped" in out for (out, _), _ in finished) == 1, report
    assert remote_output_table(s3, f"{BUCKET}/out", columns=["image_id"]).num_rows == 5

    # A local output on a multi-node cluster is refused before anything runs.
    local = run("--set", f"output.uri={tmp_path / 'local-out'}")
    assert local.returncode == ExitCode.BAD_JOB
    assert "output.uri" in local.stderr and "2 nodes" in local.stderr
    assert not (tmp_path / "local-out").exists()

    shown = subprocess.run(
        [SFP_LABEL, "show", f"s3://{BUCKET}/out", "-o", f"endpoint_url={s3_server.endpoint_url}", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == ExitCode.OK, shown.stderr
    assert '"images": 5' in shown.stdout
