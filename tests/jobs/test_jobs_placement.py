"""Which jobs may run where: local paths on one machine, on a multi-node cluster, on an autoscaling one."""

from __future__ import annotations

import pytest

from jobs.jobfile import JobError, load_job
from jobs.jobfile.placement import SUBMITTED_JOB_ENV, ClusterView, check_placement, check_submitted_output

SINGLE = ClusterView(nodes=1, driver_cpus=2, driver_gpus=0)
TWO_NODES = ClusterView(nodes=2, driver_cpus=0, driver_gpus=0)
AUTOSCALING_HEAD = ClusterView(nodes=1, driver_cpus=0, driver_gpus=0)  # cluster.yaml's head, no workers yet


def job(tmp_path, output="/data/out", input_uri="s3://b/in", weights="random", shared=False, gpus=0.0):
    path = tmp_path / "job.yaml"
    path.write_text(
        f"input: {{uri: '{input_uri}'}}\noutput: {{uri: '{output}', shared_filesystem: {str(shared).lower()}}}\n"
        f"model: {{arch: SFP-Tiny-16, weights: '{weights}'}}\nvocabulary: {{classes: [cat]}}\n"
        f"resources: {{gpus_per_actor: {gpus}}}\n"
    )
    return load_job(path, environ={})


@pytest.mark.parametrize("view", [None, SINGLE])
def test_one_machine_takes_local_paths(tmp_path, view, monkeypatch):
    monkeypatch.delenv(SUBMITTED_JOB_ENV, raising=False)
    assert check_placement(job(tmp_path, output="out/x", input_uri="images"), view) == []


@pytest.mark.parametrize(("view", "reason"), [(TWO_NODES, "2 nodes"), (AUTOSCALING_HEAD, "autoscaler")])
def test_local_output_is_refused_where_work_runs_elsewhere(tmp_path, view, reason):
    with pytest.raises(JobError) as info:
        check_placement(job(tmp_path, output="/data/out"), view)
    assert "output.uri" in str(info.value) and reason in str(info.value)
    assert check_placement(job(tmp_path, output="s3://b/out"), view) == []


def test_gpu_actors_on_a_cpu_head_run_elsewhere(tmp_path):
    with pytest.raises(JobError, match="cannot host the SFP actors"):
        check_placement(job(tmp_path, gpus=1), SINGLE)


def test_shared_filesystem_is_allowed_with_warnings(tmp_path):
    weights = tmp_path / "tiny.pt"
    weights.write_bytes(b"x")
    shared = job(tmp_path, input_uri="/nfs/images", weights=str(weights), shared=True)
    warnings = check_placement(shared, TWO_NODES)
    assert any(w.startswith("input.uri") for w in warnings)
    assert any(w.startswith("model.weights") for w in warnings)


def test_relative_output_under_ray_job_submit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(SUBMITTED_JOB_ENV, "{}")
    with pytest.raises(JobError, match=r"output\.uri.*relative.*temporary copy of --working-dir"):
        check_submitted_output(job(tmp_path, output="out/x"))
    check_submitted_output(job(tmp_path, output="/abs/out"))
    check_submitted_output(job(tmp_path, output="s3://bucket/out"))
    monkeypatch.delenv(SUBMITTED_JOB_ENV)
    check_submitted_output(job(tmp_path, output="out/x"))  # a local run: relative to where it runs
