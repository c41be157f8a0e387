"""Joining or starting Ray for a run: quietly, on loopback only when started here, and without losing the
caller's SIGTERM handler, which commits what is finished before the run exits."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

import ray

# A Ray started here listens on loopback only: nothing on the network can reach its ports.
_RAY_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ensure_ray(verbose: bool = False) -> None:
    """Use the running Ray; else join RAY_ADDRESS's cluster; else start a local one (never a stale cluster).

    Quiet unless `verbose`: Ray's own INFO lines and the workers' output stay in Ray's log files
    (`/tmp/ray/session_latest/logs`); errors still reach the driver as exceptions.

    `ray.init` replaces the SIGTERM handler with one that exits at once; the caller's handler (the CLI's,
    which unwinds like Ctrl-C so finished work is committed and the lease released) is put back.
    """
    if ray.is_initialized():
        return
    quiet = {"logging_level": logging.INFO if verbose else logging.ERROR, "log_to_driver": verbose}
    with _sigterm_kept_through_init():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(**quiet)
        else:
            _loopback_only()
            ray.init(address="local", include_dashboard=False, **quiet)


@contextlib.contextmanager
def _sigterm_kept_through_init() -> Iterator[None]:
    """Put the caller's SIGTERM handler back after `ray.init`, and deliver to it a SIGTERM that came meanwhile.

    Ray's handler calls `sys.exit(15)`, but where the signal lands while Python runs a fork hook (Ray
    starts its processes during init) that SystemExit is printed and dropped, and the run went on as
    if nothing was asked. The interpreter also writes every signal's number to the wakeup fd, whatever
    handler runs, so a signal seen there is sent again once our handler is back.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    earlier_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(earlier_wakeup)
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)
        try:
            seen = os.read(read_end, 4096)
        except BlockingIOError:
            seen = b""
        os.close(read_end)
        os.close(write_end)
    if signal.SIGTERM in seen and callable(previous):
        os.kill(os.getpid(), signal.SIGTERM)  # Ray's handler dropped it: ours unwinds like Ctrl-C


def _loopback_only() -> None:
    """Make the local Ray this process starts listen on 127.0.0.1 only.

    `ray.init(_node_ip_address="127.0.0.1")` is turned back into the machine's
    routable address by Ray itself; what keeps a node on loopback is Ray's
    single-machine mode (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`), read by the
    processes it starts from the environment and by this one from its
    constants, which were read when ray was imported.
    """
    os.environ[_RAY_SINGLE_MACHINE_ENV] = "0"
    ray_constants = importlib.import_module("ray._private.ray_constants")
    ray_constants.ENABLE_RAY_CLUSTER = False
