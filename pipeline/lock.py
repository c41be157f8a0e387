"""One run at a time per output: `_lock.json`, kept fresh by a heartbeat, so two runs never both write.

A lock is abandoned when its heartbeat is older than `STALE_AFTER_S`, or at
once when it names a process on this host that no longer exists (a killed
driver), so a re-run after a crash never waits. Object stores have no atomic
create-if-absent that pyarrow exposes; the lock is written, then read back,
and whoever's id is there owns it: overlapping cron runs are refused, two
starts in the same instant are not guaranteed to be.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs

from .storage import Location

LOCK = "_lock.json"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class OutputLocked(RuntimeError):
    """Another run is writing this output."""


@contextlib.contextmanager
def output_lock(output: Location, run_id: str) -> Iterator[None]:
    """Hold the output's lock for the duration of the block."""
    fs = output.filesystem()
    path = output.join(LOCK)
    holder = _read(fs, path)
    if holder is not None and not _abandoned(holder):
        age = time.time() - float(holder.get("heartbeat", 0))
        raise OutputLocked(
            f"{output.uri} is being written by run {holder.get('run_id')} (host {holder.get('host')}, "
            f"pid {holder.get('pid')}, alive {age:.0f}s ago); wait for it, or delete {output.uri_of(path)} "
            "if that run is gone"
        )
    fs.create_dir(output.path, recursive=True)
    _write(fs, path, run_id)
    if (_read(fs, path) or {}).get("run_id") != run_id:
        raise OutputLocked(f"{output.uri}: another run took the lock at the same moment")
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(fs, path, run_id, stop), name="sfp-lock", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        if (_read(fs, path) or {}).get("run_id") == run_id:
            fs.delete_file(path)


def _heartbeat(fs: pafs.FileSystem, path: str, run_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with contextlib.suppress(OSError):  # a missed beat only ages the lock
            _write(fs, path, run_id)


def _write(fs: pafs.FileSystem, path: str, run_id: str) -> None:
    record = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
    with fs.open_output_stream(path) as stream:
        stream.write(json.dumps(record).encode())


def _read(fs: pafs.FileSystem, path: str) -> dict[str, Any] | None:
    try:
        with fs.open_input_stream(path) as stream:
            return json.loads(stream.read())
    except FileNotFoundError:
        return None
    except ValueError:  # half-written or garbled: held, until it is as old as a stale heartbeat
        mtime = fs.get_file_info(path).mtime
        return {"run_id": "unknown", "heartbeat": mtime.timestamp() if mtime else 0.0}


def _abandoned(holder: dict[str, Any]) -> bool:
    if time.time() - float(holder.get("heartbeat", 0)) > STALE_AFTER_S:
        return True
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # exists, owned by someone else
            return False
    return False
