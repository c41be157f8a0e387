"""The output lease: one writer at a time, expiry after a crash, takeover detection, and a real race."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import fsspec
import pytest
from fsspec import AbstractFileSystem

from jobs.lease import LEASE_DIR, LeaseHeld, LeaseLost, OutputLease
from jobs.storage import open_location


@pytest.fixture
def local(tmp_path):
    return fsspec.filesystem("file"), str(tmp_path / "out")


def lease_files(fs, root) -> list[str]:
    return sorted(path.rsplit("/", 1)[-1] for path in fs.ls(f"{root}/{LEASE_DIR}", detail=False))


def test_second_run_is_refused_while_the_first_holds_the_lease(local):
    fs, root = local
    with OutputLease(fs, root, "nightly"), pytest.raises(LeaseHeld, match=r"job 'nightly' on .*\(pid \d+\)"):
        OutputLease(fs, root, "nightly").acquire()
    with OutputLease(fs, root, "nightly") as again:  # released: the next run goes ahead
        assert again.generation == 2
    record = json.loads(fs.cat_file(f"{root}/{LEASE_DIR}/000000000002.json"))
    assert record["released"] is True and record["job"] == "nightly"


def test_old_generations_are_pruned(local):
    fs, root = local
    for _ in range(4):
        with OutputLease(fs, root, "job"):
            pass
    assert lease_files(fs, root) == ["000000000003.json", "000000000004.json"]


def test_crashed_holder_expires_and_is_taken_over(local):
    fs, root = local
    crashed = OutputLease(fs, root, "job", ttl_s=0.3)
    crashed.acquire()  # no heartbeat and no release: as if the process died
    with pytest.raises(LeaseHeld):
        OutputLease(fs, root, "job").acquire()
    time.sleep(0.4)
    successor = OutputLease(fs, root, "job")
    successor.acquire()
    assert successor.generation == 2
    crashed.renew()  # the old holder wakes up: it must notice, not overwrite the successor's lease
    assert crashed.lost
    crashed.release()
    assert json.loads(fs.cat_file(f"{root}/{LEASE_DIR}/000000000002.json"))["holder"] == successor.holder


def test_heartbeat_keeps_a_long_run_leased(local):
    fs, root = local
    with OutputLease(fs, root, "long", ttl_s=0.4):
        time.sleep(1.0)  # 2.5 lease lengths: only the heartbeat keeps it alive
        with pytest.raises(LeaseHeld):
            OutputLease(fs, root, "other").acquire()


def test_losing_the_lease_fails_the_run(local):
    fs, root = local
    with pytest.raises(LeaseLost), OutputLease(fs, root, "slow", ttl_s=60) as lease:
        lease.ttl_s = 0.0  # the next renewal comes too late ...
        lease.renew()
        OutputLease(fs, root, "thief").acquire()  # ... and another run takes over
        lease.renew()
        assert lease.lost


def test_unreadable_lease_counts_as_held(local):
    fs, root = local
    fs.makedirs(f"{root}/{LEASE_DIR}", exist_ok=True)
    fs.pipe_file(f"{root}/{LEASE_DIR}/000000000001.json", b"{not json")
    with pytest.raises(LeaseHeld, match="unreadable"):
        OutputLease(fs, root, "job").acquire()


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
    fs, root = local
    for _ in range(5):
        winners = race(lambda: OutputLease(fs, root, "racer"))
        assert len(winners) == 1
        winners[0].release()


def test_simultaneous_starts_on_s3_have_exactly_one_winner(s3_server):
    """Conditional creates on a real S3 server (SeaweedFS): the lease holds across machines, not just locally."""
    s3_server.create_bucket("leases")

    def own_client() -> tuple[AbstractFileSystem, str]:  # each racer its own S3 client, as separate machines
        return open_location("s3://leases/out", {**s3_server.storage_options, "skip_instance_cache": True})

    fs, root = own_client()
    for _ in range(3):
        winners = race(lambda: OutputLease(*own_client(), "racer"), runners=6)
        assert len(winners) == 1
        with pytest.raises(LeaseHeld):
            OutputLease(fs, root, "late").acquire()
        winners[0].release()
    assert lease_files(fs, root) == ["000000000002.json", "000000000003.json"]
