"""The output lease: one writer at a time, takeover after a crash, fenced commits, and a real race."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import LeaseHeld, LeaseLost, OutputVanished
from pipeline.lease import DEFAULT_TTL_S, OutputLease
from pipeline.output import LEASE_DIR
from pipeline.retry import Retry
from pipeline.storage import Location

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def local(tmp_path) -> Location:
    return Location.parse(str(tmp_path / "out"))


def lease_files(output: Location) -> list[str]:
    return sorted(path.rsplit("/", 1)[-1] for path in output.fsspec().ls(f"{output.path}/{LEASE_DIR}", detail=False))


def record(output: Location, generation: int) -> dict:
    return json.loads(output.fsspec().cat_file(f"{output.path}/{LEASE_DIR}/{generation:012d}.json"))


def plant(output: Location, generation: int, **fields) -> None:
    """A lease record as another process (or host) would have left it."""
    now = time.time()
    data = {"holder": "other", "host": "elsewhere", "pid": 1, "job": "nightly", "acquired_at": now}
    data.update({"expires_at": now + 600, "released": False, **fields})
    fs = output.fsspec()
    fs.makedirs(f"{output.path}/{LEASE_DIR}", exist_ok=True)
    fs.pipe_file(f"{output.path}/{LEASE_DIR}/{generation:012d}.json", json.dumps(data).encode())


def test_second_run_is_refused_while_the_first_holds_the_lease(local):
    with OutputLease(local, "nightly"), pytest.raises(LeaseHeld, match=r"job 'nightly' on .*\(pid \d+\)"):
        OutputLease(local, "nightly").acquire()
    with OutputLease(local, "nightly") as again:  # released: the next run goes ahead
        assert again.generation == 2
    assert record(local, 2)["released"] is True and record(local, 2)["job"] == "nightly"


def test_old_generations_are_pruned(local):
    for _ in range(4):
        with OutputLease(local, "job"):
            pass
    assert lease_files(local) == ["000000000003.json", "000000000004.json"]


def test_crashed_holder_expires_and_is_taken_over(local):
    crashed = OutputLease(local, "job", ttl_s=0.3)
    crashed.acquire()  # no heartbeat and no release: as if the process hung
    with pytest.raises(LeaseHeld):
        OutputLease(local, "job").acquire()
    time.sleep(0.4)
    successor = OutputLease(local, "job")
    successor.acquire()
    assert successor.generation == 2
    crashed.renew()  # the old holder wakes up: it must notice, not overwrite the successor's lease
    assert crashed.lost
    crashed.release()
    assert record(local, 2)["holder"] == successor.holder


def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(local):
    """A killed driver never makes the next run wait for the expiry; a live one elsewhere does."""
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    plant(local, 1, host=socket.gethostname(), pid=dead.pid)
    with OutputLease(local, "next") as lease:
        assert lease.generation == 2
    plant(local, 3, host="elsewhere", pid=1)
    with pytest.raises(LeaseHeld, match="job 'nightly' on elsewhere"):
        OutputLease(local, "next").acquire()


def test_a_lease_this_process_failed_to_release_is_taken_over(local):
    """A release lost to a storage outage leaves a live-looking record naming this very process."""
    stranded = OutputLease(local, "job")
    stranded.acquire()
    stranded.lost = True  # as if the release could not be written: the record stays unreleased ...
    stranded.release()
    assert record(local, 1)["released"] is False
    with OutputLease(local, "job") as lease:  # ... yet this process knows it holds no such lease
        assert lease.generation == 2


def test_heartbeat_keeps_a_long_run_leased(local):
    with OutputLease(local, "long", ttl_s=0.4):
        time.sleep(1.0)  # 2.5 lease lengths: only the heartbeat keeps it alive
        with pytest.raises(LeaseHeld):
            OutputLease(local, "other").acquire()


def test_losing_the_lease_fails_the_run_and_fences_its_commits(local):
    with pytest.raises(LeaseLost), OutputLease(local, "slow", ttl_s=60) as lease:
        claim = lease.claim
        claim.verify(Retry())
        lease.ttl_s = 0.0  # the next renewal comes too late ...
        lease.renew()
        OutputLease(local, "thief").acquire()  # ... and another run takes over
        with pytest.raises(LeaseLost, match="not committing"):
            claim.verify(Retry())  # what a write task checks before each commit
        lease.renew()
        assert lease.lost


def test_retried_create_finds_its_own_lease(local):
    """An exclusive create whose answer was lost and is retried must not count as another run's."""
    lease = OutputLease(local, "job")
    assert lease._create(1)
    assert lease._create(1)
    assert not OutputLease(local, "job")._create(1)


def test_unreadable_lease_counts_as_held(local):
    fs = local.fsspec()
    fs.makedirs(f"{local.path}/{LEASE_DIR}", exist_ok=True)
    fs.pipe_file(f"{local.path}/{LEASE_DIR}/000000000001.json", b"{not json")
    with pytest.raises(LeaseHeld, match="unreadable"):
        OutputLease(local, "job").acquire()


def race(make_lease: Callable[[], OutputLease], runners: int = 8) -> list[OutputLease]:
    """Start `runners` acquisitions at the same instant; return the winners."""
    barrier = threading.Barrier(runners)
    winners, errors = [], []

    def attempt() -> None:
        lease = make_lease()
        barrier.wait()
        try:
            lease.acquire()
            winners.append(lease)
        except LeaseHeld:
            pass
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    return winners


def test_simultaneous_starts_have_exactly_one_winner(local):
    for _ in range(5):
        winners = race(lambda: OutputLease(local, "racer"))
        assert len(winners) == 1
        winners[0].release()


def test_simultaneous_starts_on_s3_have_exactly_one_winner(s3_server):
    """Conditional creates on a real S3 server (SeaweedFS): the lease holds across machines, not just locally."""
    s3_server.create_bucket("leases")

    def own_client() -> Location:  # each racer its own S3 client, as separate machines
        return Location.parse("s3://leases/out", {**s3_server.storage_options, "skip_instance_cache": True})

    output = own_client()
    for _ in range(3):
        winners = race(lambda: OutputLease(own_client(), "racer"), runners=6)
        assert len(winners) == 1
        with pytest.raises(LeaseHeld):
            OutputLease(output, "late").acquire()
        winners[0].release()
    assert lease_files(output) == ["000000000002.json", "000000000003.json"]


def test_an_unreadable_lease_file_blocks_only_until_its_ttl(local):
    fs = local.fsspec()
    fs.makedirs(f"{local.path}/{LEASE_DIR}", exist_ok=True)
    empty = f"{local.path}/{LEASE_DIR}/{1:012d}.json"
    fs.pipe_file(empty, b"")  # a writer died mid-write
    with pytest.raises(LeaseHeld, match="unreadable"):
        OutputLease(local, "nightly").acquire()
    old = time.time() - DEFAULT_TTL_S - 5
    os.utime(empty, (old, old))
    lease = OutputLease(local, "nightly")
    lease.acquire()  # taken over, with a warning
    assert lease.generation == 2
    lease.release()


def test_a_deleted_output_is_reported_as_such_not_as_a_takeover(local):
    with OutputLease(local, "nightly") as lease:
        claim = lease.claim
        shutil.rmtree(local.path)
        with pytest.raises(OutputVanished, match="vanished"):
            claim.verify(Retry(patience_s=1))
        Path(local.path).mkdir()  # so the lease's own release has somewhere to write
