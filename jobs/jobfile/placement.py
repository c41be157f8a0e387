"""Catch jobs that only work on one machine before they run on many.

On a multi-node Ray cluster, actors and tasks run on any node, and a local
path means a different disk on each: output would be scattered over the
nodes' disks, and input or weights missing where they were not copied. An
autoscaling cluster may have one node now and more once the actors ask for
GPUs, so a head node that cannot host the actors counts as "many" too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline import ensure_ray, is_local_uri

from .errors import JobError
from .resolve import Job

# Set by `ray job submit` for the entrypoint: the job runs in a temporary copy of --working-dir.
SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


@dataclass(frozen=True)
class ClusterView:
    """What the driver sees of the Ray cluster it joined."""

    nodes: int
    driver_cpus: float
    driver_gpus: float


def cluster_view(verbose: bool = False) -> ClusterView | None:
    """The cluster in RAY_ADDRESS (or the one already joined); None when `label` starts a local Ray itself."""
    import ray

    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):
            return None
        ensure_ray(verbose)  # joins the cluster in RAY_ADDRESS, as `label` would anyway
    alive = [node for node in ray.nodes() if node.get("Alive")]
    here = ray.get_runtime_context().get_node_id()
    resources = next((node["Resources"] for node in alive if node["NodeID"] == here), {})
    return ClusterView(len(alive), resources.get("CPU", 0.0), resources.get("GPU", 0.0))


def _runs_elsewhere(job: Job, view: ClusterView | None) -> str | None:
    """Why the run's actors and tasks may land on other machines, or None if they stay on this one."""
    if view is None:
        return None
    if view.nodes > 1:
        return f"the Ray cluster has {view.nodes} nodes"
    if view.driver_cpus < 1 or view.driver_gpus < job.spec.resources.gpus_per_actor:
        return (
            f"this node (CPU {view.driver_cpus:g}, GPU {view.driver_gpus:g}) cannot host the SFP actors, "
            "so they will run on nodes the autoscaler adds"
        )
    return None


def check_placement(job: Job, view: ClusterView | None) -> list[str]:
    """Raise JobError for a local output the run's nodes would not share; return warnings for milder cases."""
    spec = job.spec
    warnings = []
    elsewhere = _runs_elsewhere(job, view)
    if elsewhere:
        if is_local_uri(spec.output.uri) and not spec.output.shared_filesystem:
            problem = (
                f"{spec.output.uri!r} is a local path but {elsewhere}: each node would write its part to its own "
                "disk. Use object storage (s3://, gs://, ...), or set output.shared_filesystem: true if the path "
                "is a filesystem mounted at the same place on every node (NFS)"
            )
            raise JobError(job.source, [("output.uri", problem)])
        if is_local_uri(spec.input.uri):
            warnings.append(
                f"input.uri {spec.input.uri!r} is a local path and {elsewhere}: read tasks run on any node, "
                "so every node must see the images at that path"
            )
        if Path(spec.model.weights).expanduser().is_file():
            warnings.append(
                f"model.weights {spec.model.weights!r} is a local file and {elsewhere}: actors load it from their "
                "own node's disk; an s3:// or gs:// URI is fetched and cached on each node"
            )
    return warnings


def check_submitted_output(job: Job) -> None:
    """Under `ray job submit` the driver runs in a temporary copy of --working-dir: a relative local output
    would land there and vanish with it, so it is refused (before anything starts)."""
    uri = job.spec.output.uri
    relative = not Path(uri.removeprefix("file://")).expanduser().is_absolute()
    if os.environ.get(SUBMITTED_JOB_ENV) and is_local_uri(uri) and relative:
        problem = (
            f"{uri!r} is relative: under `ray job submit` it would land in the job's temporary copy of "
            f"--working-dir ({os.getcwd()}) and be deleted with it; use an absolute path or s3:// / gs://"
        )
        raise JobError(job.source, [("output.uri", problem)])
