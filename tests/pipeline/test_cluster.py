"""Whether the cluster can host one SFP actor (`pipeline.cluster`): refused where no node can come, reported
every 30 s where an autoscaler may still add one. A real autoscaler cannot run here: its decision and its
words are tested on node lists, and a local Ray must read as one that never grows."""

from __future__ import annotations

import json
import logging
import time

import pytest

from pipeline import Resources
from pipeline.cluster import Capacity, check_capacity, cluster_capacity, lacking, waiting_message, waiting_reports
from pipeline.errors import ClusterCannotHostActor

CPU_NODE = {"CPU": 8.0, "memory": 1e10}
GPU_NODE = {"CPU": 4.0, "GPU": 1.0}
HEAD_WITHOUT_CPU = {"CPU": 0.0, "GPU": 0.0, "driver": 4.0}  # cluster.yaml's head node
GPU_WITHOUT_CPU = {"CPU": 0.0, "GPU": 1.0}


@pytest.mark.parametrize(
    ("gpus", "nodes", "missing"),
    [
        (0, [CPU_NODE], None),
        (1, [CPU_NODE, GPU_NODE], None),
        (0.5, [GPU_NODE], None),
        (1, [CPU_NODE], {"GPU": 1.0}),
        (2, [GPU_NODE], {"GPU": 2.0}),
        (0, [HEAD_WITHOUT_CPU], {"CPU": 1.0}),
        (1, [GPU_WITHOUT_CPU, CPU_NODE], {"CPU": 1.0, "GPU": 1.0}),  # each exists, never together
        (1, [], {"CPU": 1.0, "GPU": 1.0}),
    ],
)
def test_what_no_node_has_for_one_actor(gpus, nodes, missing):
    assert lacking(Resources(gpus_per_actor=gpus), nodes) == missing


def test_many_actors_are_no_error_one_that_fits_nowhere_is():
    check_capacity(Resources(actors=(64, 64)), Capacity((CPU_NODE,), "this machine's local Ray", may_grow=False))
    with pytest.raises(ClusterCannotHostActor) as refused:
        check_capacity(Resources(gpus_per_actor=1), Capacity((CPU_NODE,), "this machine's local Ray", may_grow=False))
    message = str(refused.value)
    assert message.startswith("resources.gpus_per_actor:")
    assert "1 GPU" in message and "CPU 8, GPU 0" in message and "gpus_per_actor: 0" in message
    assert "\n" not in message


def test_a_cluster_that_may_grow_or_is_unknown_is_not_refused():
    check_capacity(Resources(gpus_per_actor=1), Capacity((CPU_NODE,), "the Ray cluster (1 nodes)", may_grow=True))
    check_capacity(Resources(gpus_per_actor=1), None)


@pytest.mark.parametrize(
    ("gpus", "nodes", "message"),
    [
        (1, [HEAD_WITHOUT_CPU], "waiting for 1 GPU: no node has one yet"),
        (4, [GPU_NODE], "waiting for 4 GPU: no node has that many yet"),
        (0, [HEAD_WITHOUT_CPU], "waiting for 1 CPU: no node has one yet"),
        (
            1,
            [GPU_WITHOUT_CPU, CPU_NODE],
            "waiting for a node with 1 CPU and 1 GPU: none has joined yet",
        ),
        (1, [HEAD_WITHOUT_CPU, GPU_NODE], None),
    ],
)
def test_what_a_growing_cluster_waits_for(gpus, nodes, message):
    assert waiting_message(Resources(gpus_per_actor=gpus), nodes) == message


def test_the_wait_is_reported_every_period_until_the_run_ends(ray_local, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline"), waiting_reports(Resources(gpus_per_actor=1), 0.05):
        time.sleep(0.5)
    assert len(_waits(caplog)) >= 2
    caplog.clear()
    time.sleep(0.2)
    assert not _waits(caplog)  # stopped with the run


def _waits(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage() == "waiting for 1 GPU: no node has one yet"]


def test_a_local_ray_never_grows(ray_local):
    """Its autoscaler runs read-only; until its first report (seconds after the first status, which holds only
    load metrics) nothing says so."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    def reported() -> bool:
        status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        return bool(status and json.loads(status).get("autoscaler_report"))

    deadline = time.monotonic() + 120
    while not reported() and time.monotonic() < deadline:
        time.sleep(0.5)
    capacity = cluster_capacity()
    assert capacity is not None and not capacity.may_grow
    assert [node["CPU"] for node in capacity.nodes] == [2.0]
