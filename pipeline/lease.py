"""The output lease: at most one run writes an output at a time, and a run that lost it stops committing.

Scheduled jobs overlap when a run takes longer than the schedule's period;
incremental mode alone would let both runs label (and write) the same new
images. Each run therefore takes a lease before it writes anything:

* lease files are `output.lease_path(generation)` (hidden from readers);
  the highest generation is the current lease;
* a run may take generation N+1 only if generation N is released or
  abandoned, and takes it with an exclusive create (`open(..., "xb")`:
  O_EXCL locally, `If-None-Match: *` on S3), so of two runs starting
  together exactly one wins;
* the holder renews the expiry from a heartbeat thread while it runs, and
  marks its generation released when done. A lease is abandoned when it
  expired (`ttl`), or at once when it names a process on this host that is
  gone (a killed driver) or this very process that no longer holds it (a
  release that failed during an outage), so a re-run never waits for them;
* the writer checks the claim (`LeaseClaim.verify`) before each commit, so a
  run that lost its lease stops adding files once a successor holds the
  output.

The storage must honour conditional creates (AWS S3 since 2024, SeaweedFS,
MinIO, local and shared POSIX filesystems).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from fsspec import AbstractFileSystem

from .errors import LeaseHeld, LeaseLost, OutputVanished
from .output.layout import lease_dir, lease_path
from .retry import Retry
from .storage import Location

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 600.0

T = TypeVar("T")

_HELD: set[str] = set()  # holder ids of the leases this process holds right now


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    host: str
    pid: int
    job: str
    acquired_at: float
    expires_at: float
    released: bool = False

    def live(self, now: float) -> bool:
        return not self.released and self.expires_at > now and not self._abandoned_here()

    def _abandoned_here(self) -> bool:
        """Held by a process of this host that is gone, or by this process though it no longer holds it."""
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return self.holder not in _HELD
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # exists, owned by someone else
            return False
        return False

    def describe(self) -> str:
        acquired = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.acquired_at))
        expires = time.strftime("%H:%M:%S", time.localtime(self.expires_at))
        return f"job {self.job!r} on {self.host} (pid {self.pid}), since {acquired}, lease expires {expires}"


def _generations(fs: AbstractFileSystem, output: Location) -> list[int]:
    directory = lease_dir(output)
    fs.invalidate_cache(directory)
    try:
        names = fs.ls(directory, detail=False)
    except FileNotFoundError:
        return []
    stems = (os.path.basename(name.rstrip("/")).removesuffix(".json") for name in names)
    return sorted(int(stem) for stem in stems if stem.isdigit())


def _read(fs: AbstractFileSystem, output: Location, generation: int) -> LeaseRecord | None:
    """The record of a generation; None if it vanished.

    An unreadable record (0 bytes, garbage: a writer died mid-write, or a
    storage hiccup) counts as held until the lease's TTL has passed since the
    file was last written, then as abandoned, so it never blocks an output
    forever.
    """
    path = lease_path(output, generation)
    try:
        return LeaseRecord(**json.loads(fs.cat_file(path)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        written = _modified_at(fs, path)
        if written is None or time.time() - written < DEFAULT_TTL_S:
            raise LeaseHeld(
                f"lease file {path} is unreadable; it counts as held until {DEFAULT_TTL_S:.0f}s after it was "
                "written, or delete it if no run is writing this output"
            ) from None
        log.warning("lease file %s is unreadable and older than the lease TTL: taking it as abandoned", path)
        return LeaseRecord("", "", 0, "an unreadable lease file", written, written, released=True)


def _modified_at(fs: AbstractFileSystem, path: str) -> float | None:
    """When a file was last written (epoch seconds), from whichever field the filesystem reports."""
    info = fs.info(path)
    stamp = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if stamp is None:
        return None
    return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)


def live_lease(output: Location, retry: Retry) -> LeaseRecord | None:
    """The lease record of the run writing `output` now, or None when no run holds it."""
    fs = output.fsspec()

    def read() -> LeaseRecord | None:
        generations = _generations(fs, output)
        if not generations:
            return None
        try:
            record = _read(fs, output, generations[-1])
        except LeaseHeld:  # unreadable but recent: someone may be writing
            return LeaseRecord("", "", 0, "", 0.0, time.time() + 1.0)
        return record if record is not None and record.live(time.time()) else None

    return retry.call(f"reading the lease of {output.uri}", read)


def writing_job(output: Location) -> str | None:
    """The job name of the run writing `output` right now (its live lease), or None: what `show` reports."""
    record = live_lease(output, Retry(patience_s=10))
    return record.job if record else None


@dataclass(frozen=True)
class LeaseClaim:
    """The generation of an output's lease that a run holds; checked before each commit (picklable)."""

    output: Location
    generation: int
    holder: str

    def verify(self, retry: Retry) -> None:
        """Raise LeaseLost unless this claim is still the output's current lease."""
        fs = self.output.fsspec()

        def current() -> LeaseRecord | None:
            generations = _generations(fs, self.output)
            if not generations:  # our own lease file is gone too: the output itself was removed
                raise OutputVanished(
                    f"the output {self.output.uri} vanished while the run was writing (bucket or folder "
                    "deleted?); nothing more is committed"
                )
            if generations[-1] != self.generation:
                return None
            return _read(fs, self.output, self.generation)

        record = retry.call(f"checking the lease on {self.output.uri}", current)
        if record is None or record.holder != self.holder:
            raise LeaseLost(f"the lease on {self.output.uri} was taken over by another run; not committing")


class OutputLease:
    """Context manager holding the lease on one output for the duration of a run."""

    def __init__(self, output: Location, job: str, *, ttl_s: float = DEFAULT_TTL_S, retry: Retry | None = None):
        self.output = output
        self.fs = output.fsspec()
        self.job = job
        self.ttl_s = ttl_s
        self.retry = retry or Retry()
        self.holder = uuid.uuid4().hex
        self.generation: int | None = None
        self.lost = False
        self._acquired_at = 0.0
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def claim(self) -> LeaseClaim:
        if self.generation is None:
            raise RuntimeError("the lease is not held")
        return LeaseClaim(self.output, self.generation, self.holder)

    def _record(self, released: bool = False) -> bytes:
        now = time.time()
        record = LeaseRecord(
            holder=self.holder,
            host=socket.gethostname(),
            pid=os.getpid(),
            job=self.job,
            acquired_at=self._acquired_at or now,
            expires_at=now if released else now + self.ttl_s,
            released=released,
        )
        return json.dumps(asdict(record)).encode()

    def _call(self, what: str, fn: Callable[[], T], retry: Retry | None = None) -> T:
        return (retry or self.retry).call(f"{what} the lease on {self.output.uri}", fn)

    def _create(self, generation: int) -> bool:
        """Exclusively create a generation's file; False if another run has it.

        Retried creates are idempotent: finding the file already there with
        our own holder id means an earlier attempt made it.
        """
        path = lease_path(self.output, generation)

        def create() -> bool:
            self.fs.makedirs(lease_dir(self.output), exist_ok=True)
            try:
                with self.fs.open(path, "xb") as handle:
                    handle.write(self._record())
            except FileExistsError:
                return False
            except OSError:
                # Some S3 servers answer a failed If-None-Match with a generic error: look before deciding.
                self.fs.invalidate_cache(lease_dir(self.output))
                if self.fs.exists(path):
                    return False
                raise
            return True

        if self._call("taking", create):
            return True
        record = self._call("reading", lambda: _read(self.fs, self.output, generation))
        return record is not None and record.holder == self.holder

    def acquire(self) -> None:
        """Take the lease or raise LeaseHeld naming the run that has it."""
        self._acquired_at = time.time()
        _HELD.add(self.holder)  # before the create: a record of this process not in _HELD is a finished one
        try:
            self.generation = self._take()
        except BaseException:
            _HELD.discard(self.holder)
            raise

    def _take(self) -> int:
        generations = self._call("listing", lambda: _generations(self.fs, self.output))
        top = generations[-1] if generations else 0
        current = self._call("reading", lambda: _read(self.fs, self.output, top)) if top else None
        if current is not None and current.live(time.time()):
            raise LeaseHeld(f"output is being written by {current.describe()}")
        if not self._create(top + 1):
            winner = self._call("reading", lambda: _read(self.fs, self.output, top + 1))
            raise LeaseHeld(f"output was just taken by {winner.describe() if winner else 'another run'}")
        if self._call("listing", lambda: _generations(self.fs, self.output))[-1] != top + 1:
            # Our listing was stale: someone is already further on.
            self._call("releasing", lambda: self._write(top + 1, released=True))
            raise LeaseHeld("output was taken by another run while this one was starting")
        for old in generations[:-1]:  # keep the previous generation for the record, drop the rest
            try:
                self.fs.rm_file(lease_path(self.output, old))
            except Exception as exc:  # left for the next run to prune
                log.debug("could not prune lease generation %d: %s", old, exc)
        if current is not None and not current.released:
            log.warning("took over an abandoned lease of %s", current.describe())
        return top + 1

    def _write(self, generation: int, *, released: bool) -> None:
        self.fs.pipe_file(lease_path(self.output, generation), self._record(released=released))

    def _still_ours(self, retry: Retry) -> bool:
        try:
            self.claim.verify(retry)
        except LeaseLost:
            return False
        return True

    def renew(self) -> None:
        """Push the expiry out by `ttl`; marks the lease lost if another run has taken over."""
        if not self._still_ours(self.retry.brief()):
            self.lost = True
            log.error("lease on %s was lost to another run; this run stops committing", self.output.uri)
            return
        self._write(self.generation, released=False)

    def check(self) -> None:
        """Raise LeaseLost if the heartbeat found the lease taken over (before anything is committed)."""
        if self.lost:
            raise LeaseLost(f"the lease on {self.output.uri} expired and was taken over during this run")

    def release(self, retry: Retry | None = None) -> None:
        retry = retry or self.retry
        if self.generation is not None and not self.lost and self._still_ours(retry):
            self._call("releasing", lambda: self._write(self.generation, released=True), retry)
        _HELD.discard(self.holder)
        self.generation = None

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except Exception:  # a storage hiccup: the next beat tries again before the lease expires
                log.warning("could not renew the lease on %s", self.output.uri, exc_info=True)
            if self.lost:
                return

    def __enter__(self) -> OutputLease:
        self.acquire()
        self._heartbeat = threading.Thread(target=self._beat, name="sfp-lease-heartbeat", daemon=True)
        self._heartbeat.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        failed = exc_info[0] is not None
        try:  # after a failure (an outage, say) the release is a courtesy: the lease is abandoned anyway
            self.release(self.retry.brief() if failed else None)
        except Exception:  # never hide the run's own outcome; an unreleased lease expires or is taken over
            log.warning("could not release the lease on %s; it expires by itself", self.output.uri, exc_info=True)
        finally:
            _HELD.discard(self.holder)
        if not failed:
            self.check()
