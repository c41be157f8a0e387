"""Whether the Ray cluster can ever host one SFP actor, asked before any actor starts.

Ray waits, silently and forever, for an actor no node can host (a GPU asked of
a machine without one). Where the nodes are all there will ever be (a local
Ray, a cluster without an autoscaler) such a request is the user's mistake and
refused; where an autoscaler may still add a node that has it, the run says
what it waits for instead (`WaitingReport`). Too many actors is never an
error: Ray Data runs as many as fit.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import ray

from .errors import ClusterCannotHostActor
from .ray_session import ensure_ray
from .request import Resources

log = logging.getLogger("pipeline")

ACTOR_CPUS = 1.0  # what one SFP actor asks of its node besides `resources.gpus_per_actor`
WAITING_REPORT_EVERY_S = 30.0

Node = Mapping[str, float]  # a node's total resources, as Ray names them ("CPU", "GPU", ...)


@dataclass(frozen=True)
class Capacity:
    """The nodes the run's actors can land on, and whether an autoscaler may add more."""

    nodes: tuple[Node, ...]
    where: str  # "this machine's local Ray", "the Ray cluster (3 nodes)"
    may_grow: bool


def actor_needs(resources: Resources) -> dict[str, float]:
    """What one SFP actor asks of a single node."""
    needs = {"CPU": ACTOR_CPUS}
    if resources.gpus_per_actor > 0:
        needs["GPU"] = resources.gpus_per_actor
    return needs


def _fits(needs: Mapping[str, float], node: Node) -> bool:
    return all(node.get(name, 0.0) >= amount for name, amount in needs.items())


def _nowhere(needs: Mapping[str, float], nodes: Sequence[Node]) -> dict[str, float]:
    """The resources of `needs` that no node has enough of, even alone."""
    return {name: amount for name, amount in needs.items() if not any(n.get(name, 0.0) >= amount for n in nodes)}


def lacking(resources: Resources, nodes: Sequence[Node]) -> dict[str, float] | None:
    """What no node has for one actor (only the GPUs, say), or None when some node can host one."""
    needs = actor_needs(resources)
    if any(_fits(needs, node) for node in nodes):
        return None
    return _nowhere(needs, nodes) or needs  # each resource exists, but never all of them on one node


def _amounts(resources: Mapping[str, float]) -> str:
    return " and ".join(f"{amount:g} {name}" for name, amount in resources.items())


def waiting_message(resources: Resources, nodes: Sequence[Node]) -> str | None:
    """What a run on a growing cluster waits for ("waiting for 1 GPU: no node has one yet"), or None.

    A GPU missing is what a GPU job waits for, even where the nodes so far lack CPUs too (a head node
    kept for drivers): the node that brings it brings CPUs."""
    needs = actor_needs(resources)
    if any(_fits(needs, node) for node in nodes):
        return None
    missing = _nowhere(needs, nodes)
    if not missing:
        return f"waiting for a node with {_amounts(needs)}: none has joined yet"
    name = "GPU" if "GPU" in missing else "CPU"
    return f"waiting for {missing[name]:g} {name}: no node has {'one' if missing[name] <= 1 else 'that many'} yet"


def check_capacity(resources: Resources, capacity: Capacity | None) -> None:
    """Refuse an actor no node can host, where no node can be added; `None` (unknown) passes."""
    if capacity is None or capacity.may_grow:
        return
    missing = lacking(resources, capacity.nodes)
    if missing is None:
        return
    biggest = max(capacity.nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
    has = f"CPU {biggest.get('CPU', 0.0):g}, GPU {biggest.get('GPU', 0.0):g}"
    hint = "; set resources.gpus_per_actor: 0 to run on CPUs" if "GPU" in missing else ""
    raise ClusterCannotHostActor(
        f"resources.gpus_per_actor: an SFP actor needs {_amounts(actor_needs(resources))} on one node, and no "
        f"node of {capacity.where} has {_amounts(missing)} (the biggest has {has}){hint}"
    )


def cluster_capacity(verbose: bool = False) -> Capacity | None:
    """The cluster the run will use: the one joined (Ray running here, or RAY_ADDRESS's, joined as the run
    would), else the node a local Ray would start here, as Ray itself would detect it (nothing is
    started). None when Ray's detection cannot be read."""
    if ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
        ensure_ray(verbose)
        nodes = tuple(node["Resources"] for node in ray.nodes() if node.get("Alive"))
        return Capacity(nodes, f"the Ray cluster ({len(nodes)} nodes)", _may_grow())
    local = _local_node()
    return None if local is None else Capacity((local,), "this machine's local Ray", may_grow=False)


def _local_node() -> Node | None:
    """The resources `ray.init()` would give the node it starts (CPUs, GPUs, RAY_OVERRIDE_RESOURCES)."""
    try:
        from ray._private.resource_and_label_spec import ResourceAndLabelSpec

        return ResourceAndLabelSpec().resolve(is_head=True).to_resource_dict()
    except Exception as exc:  # Ray's own detection, a private API: without it the run still reports waiting
        log.debug("cannot tell what a local Ray would have: %s", exc)
        return None


def _may_grow() -> bool:
    """Whether an autoscaler may add nodes to the joined cluster; True unless Ray says it cannot.

    Ray's cluster config (autoscaler v2, KubeRay) lists node groups that can scale; the classic
    autoscaler's status names its node types, and a cluster without one (`ray start` by hand, a
    local Ray) runs it read-only, where every node is a type of its own named after its id.
    """
    try:
        from ray._private import ray_constants
        from ray._private.state import state
        from ray.autoscaler._private.util import format_readonly_node_type
        from ray.experimental.internal_kv import _internal_kv_get

        config = state.get_cluster_config()
        if config is not None and config.node_group_configs:
            groups = [group for group in config.node_group_configs if group.resources and group.max_count != 0]
            return any(group.max_count == -1 or group.max_count > group.min_count for group in groups)
        status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        types = (json.loads(status or "{}").get("autoscaler_report") or {}).get("node_type_mapping") or {}
        return not types or any(kind != format_readonly_node_type(node) for node, kind in types.items())
    except Exception as exc:  # private APIs: when unsure, a node may still come
        log.debug("cannot tell whether the cluster autoscales: %s", exc)
        return True


@contextmanager
def waiting_reports(resources: Resources, every_s: float = WAITING_REPORT_EVERY_S) -> Iterator[None]:
    """While the body runs, say every `every_s` seconds what the actors wait for, if no node can host one
    (an autoscaling cluster that has not added such a node yet): Ray itself says nothing."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(every_s):
            try:
                message = waiting_message(resources, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
            except Exception as exc:  # a report, never a reason to stop the run
                log.debug("cannot list the cluster's nodes: %s", exc)
                continue
            if message:
                log.warning(message)

    watcher = threading.Thread(target=watch, name="sfp-waiting-reports", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
