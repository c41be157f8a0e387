"""A run's model actors end with the run, whatever else still refers to it.

When a run fails or is interrupted, Ray Data lets go of its actor pool by dropping its handles, and an
actor ends only once nothing refers to it. The run's executor is still referred to by the failed run's
traceback (kept by a notebook, a test, a caller that logs it later), so its actors lived on idle, each
holding its CPU or GPU: the next run in the same Ray session waited for those resources forever. Each
actor tells the run's roster who it is, through the weak handle an actor has of itself (it does not keep
the actor alive, so Ray Data can still shrink the pool), and the run kills every one of them when it ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import ray

log = logging.getLogger("pipeline")

# The roster answers at once unless Ray itself is going down; then there is nothing left to kill.
_ANSWER_S = 10.0


class _Roster:
    """The actors of one run (a plain Ray actor, no CPU)."""

    def __init__(self) -> None:
        self._members: dict[str, ray.actor.ActorHandle] = {}

    def join(self, actor_id: str, actor: ray.actor.ActorHandle) -> None:
        self._members[actor_id] = actor  # a restarted actor joins again under the same id

    def members(self) -> list[ray.actor.ActorHandle]:
        return list(self._members.values())


@contextlib.contextmanager
def run_actors() -> Iterator[ray.actor.ActorHandle]:
    """A roster for one run's actors (given to each as it starts, see `join_roster`); when the block ends,
    however it ends, every actor that joined is killed."""
    roster = ray.remote(num_cpus=0, max_restarts=0)(_Roster).remote()
    try:
        yield roster
    finally:
        try:
            for actor in ray.get(roster.members.remote(), timeout=_ANSWER_S):
                ray.kill(actor, no_restart=True)
            ray.kill(roster)
        except Exception as exc:  # best effort: the run's own outcome is what the caller sees
            log.warning("could not stop this run's model actors: %s", exc)


def join_roster(roster: ray.actor.ActorHandle | None) -> None:
    """Called by an actor as it starts: put itself on its run's roster (before it takes any batch)."""
    if roster is not None:
        context = ray.get_runtime_context()
        ray.get(roster.join.remote(context.get_actor_id(), context.current_actor))
