"""Catch jobs that only work on one machine before they run on many.

On a multi-node Ray cluster, actors and read tasks run on any node, and a
local path means a different disk on each: output would be scattered over
the nodes' disks, and input or weights missing where they are not copied.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import JobError
from .resolve import Job
from .storage import is_local

# Set by `ray job submit` for the entrypoint: the job runs in a temporary copy of --working-dir.
SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def ray_node_count() -> int:
    """Alive nodes of the Ray cluster the run will use; 1 when `label` will start a local Ray itself."""
    import ray

    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):
            return 1
        ray.init(address=os.environ["RAY_ADDRESS"])  # the cluster `label` would join anyway
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_placement(job: Job, nodes: int) -> list[str]:
    """Raise JobError for a local output on a multi-node cluster; return warnings for the milder cases."""
    spec = job.spec
    warnings = []
    if nodes > 1:
        if is_local(spec.output.uri) and not spec.output.shared_filesystem:
            raise JobError(
                job.source,
                [
                    (
                        "output.uri",
                        f"{spec.output.uri!r} is a local path but the Ray cluster has {nodes} nodes: each node would "
                        "write its part to its own disk. Use object storage (s3://, gs://, ...), or set "
                        "output.shared_filesystem: true if the path is a filesystem mounted on every node (NFS)",
                    )
                ],
            )
        if is_local(spec.input.uri):
            warnings.append(
                f"input.uri {spec.input.uri!r} is a local path on a {nodes}-node cluster: read tasks run on any "
                "node, so every node must see the images at that path"
            )
        weights = Path(spec.model.weights).expanduser()
        if weights.is_file():
            warnings.append(
                f"model.weights {spec.model.weights!r} is a local file on a {nodes}-node cluster: actors on other "
                "nodes load it from their own disk; an s3:// or gs:// URI is fetched and cached on each node"
            )
    relative = not Path(spec.output.uri.removeprefix("file://")).is_absolute()
    if os.environ.get(SUBMITTED_JOB_ENV) and is_local(spec.output.uri) and relative:
        warnings.append(
            f"output.uri {spec.output.uri!r} is relative: under `ray job submit` it lands in the job's temporary "
            f"copy of --working-dir ({os.getcwd()}); use object storage or an absolute path"
        )
    return warnings
