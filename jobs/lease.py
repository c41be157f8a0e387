"""A lease object in the output prefix: at most one run writes an output at a time.

Scheduled jobs overlap when a run takes longer than the schedule's period;
incremental mode alone would let both runs label (and write) the same new
images. Each run therefore takes a lease before it writes anything:

* lease files are `<output>/_lease/<generation>.json` (names starting with
  `_` are not data); the highest generation is the current lease;
* a run may take generation N+1 only if generation N is released or expired,
  and takes it with an exclusive create (`open(..., "xb")`: O_EXCL locally,
  `If-None-Match: *` on S3), so of two runs starting together exactly one wins;
* the holder renews the expiry from a heartbeat thread while it runs, and
  marks its generation released when done; a crashed run's lease expires
  after `ttl` seconds and the next run takes over.

The storage must honour conditional creates (AWS S3 since 2024, SeaweedFS,
MinIO, local and shared POSIX filesystems).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

LEASE_DIR = "_lease"
DEFAULT_TTL_S = 600.0


class LeaseHeld(RuntimeError):
    """Another run holds the output's lease (or just took it)."""


class LeaseLost(RuntimeError):
    """The lease expired and another run took it over while this run was still writing."""


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
        return not self.released and self.expires_at > now

    def describe(self) -> str:
        acquired = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.acquired_at))
        expires = time.strftime("%H:%M:%S", time.localtime(self.expires_at))
        return f"job {self.job!r} on {self.host} (pid {self.pid}), since {acquired}, lease expires {expires}"


class OutputLease:
    """Context manager holding the lease on one output prefix for the duration of a run."""

    def __init__(self, fs: AbstractFileSystem, root: str, job: str, *, ttl_s: float = DEFAULT_TTL_S):
        self.fs = fs
        self.directory = f"{root.rstrip('/')}/{LEASE_DIR}"
        self.job = job
        self.ttl_s = ttl_s
        self.holder = uuid.uuid4().hex
        self.generation: int | None = None
        self.lost = False
        self._acquired_at = 0.0
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -- storage helpers ------------------------------------------------------------------------

    def _path(self, generation: int) -> str:
        return f"{self.directory}/{generation:012d}.json"

    def _generations(self) -> list[int]:
        self.fs.invalidate_cache(self.directory)
        try:
            names = self.fs.ls(self.directory, detail=False)
        except FileNotFoundError:
            return []
        stems = (os.path.basename(name.rstrip("/")).removesuffix(".json") for name in names)
        return sorted(int(stem) for stem in stems if stem.isdigit())

    def _read(self, generation: int) -> LeaseRecord | None:
        """The record of a generation; None if it vanished. Unreadable files count as held."""
        try:
            data = json.loads(self.fs.cat_file(self._path(generation)))
            return LeaseRecord(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            raise LeaseHeld(
                f"lease file {self._path(generation)} is unreadable; delete it if no run is writing this output"
            ) from None

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

    def _create(self, generation: int) -> bool:
        """Exclusively create a generation's file; False if it already exists."""
        path = self._path(generation)
        self.fs.makedirs(self.directory, exist_ok=True)
        try:
            with self.fs.open(path, "xb") as handle:
                handle.write(self._record())
        except FileExistsError:
            return False
        except OSError:
            # Some S3 servers answer a failed If-None-Match with a generic error: look before deciding.
            self.fs.invalidate_cache(self.directory)
            if self.fs.exists(path):
                return False
            raise
        return True

    # -- the lease itself -----------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the lease or raise LeaseHeld naming the run that has it."""
        self._acquired_at = time.time()
        generations = self._generations()
        top = generations[-1] if generations else 0
        current = self._read(top) if top else None
        if current is not None and current.live(time.time()):
            raise LeaseHeld(f"output is being written by {current.describe()}")
        if not self._create(top + 1):
            winner = self._read(top + 1)
            raise LeaseHeld(f"output was just taken by {winner.describe() if winner else 'another run'}")
        if self._generations()[-1] != top + 1:  # our listing was stale: someone is already further on
            self._write(top + 1, released=True)
            raise LeaseHeld("output was taken by another run while this one was starting")
        self.generation = top + 1
        for old in generations[:-1]:  # keep the previous generation for the record, drop the rest
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self._path(old))
        if current is not None and not current.released:
            log.warning("took over an expired lease of %s", current.describe())

    def _write(self, generation: int, *, released: bool) -> None:
        self.fs.pipe_file(self._path(generation), self._record(released=released))

    def _still_ours(self) -> bool:
        generations = self._generations()
        if not generations or generations[-1] != self.generation:
            return False
        record = self._read(self.generation)
        return record is not None and record.holder == self.holder

    def renew(self) -> None:
        """Push the expiry out by `ttl`; marks the lease lost if another run has taken over."""
        if not self._still_ours():
            self.lost = True
            log.error("lease on %s was lost to another run; this run's writes may overlap with it", self.directory)
            return
        self._write(self.generation, released=False)

    def release(self) -> None:
        if self.generation is not None and not self.lost and self._still_ours():
            self._write(self.generation, released=True)
        self.generation = None

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except Exception:  # a storage hiccup: the next beat tries again before the lease expires
                log.warning("could not renew the lease on %s", self.directory, exc_info=True)
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
        try:
            self.release()
        except Exception:  # never hide the run's own outcome; an unreleased lease just expires after `ttl`
            log.warning("could not release the lease on %s; it expires by itself", self.directory, exc_info=True)
        if self.lost and exc_info[0] is None:
            raise LeaseLost(f"the lease on {self.directory} expired and was taken over during this run")
