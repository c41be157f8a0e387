"""Keep the command's output for our user: what says nothing to them is filtered unless --verbose.

Warnings our own code caused are fixed where they arise; what remains comes
from our dependencies (deprecations inside Ray Data, PyTorch and friends) and
is the maintainers' concern, not the user's. Ray's and the workers' logs are
kept out of the driver's output by `pipeline.ensure_ray` itself, except one
route: Ray's C++ core worker copies its own ERROR lines to the driver's
stderr (ray-project/ray#18577), and a routine one comes with every actor pool
(Ray Data's actors take their arguments from the object store and may be
restarted: ray-project/ray#53727). `without_ray_core_lines` keeps such lines
off the terminal; they stay in Ray's log files (`python-core-driver-*.log`),
and a real failure still reaches us as an exception.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers that speak at WARNING about their own internals (Ray's start-up, autoscaler hints).
_CHATTY_LOGGERS = ("ray", "ray.data", "filelock", "urllib3")


def quiet_warnings() -> None:
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


# `[2026-12-07 17:39:26,953 E 24579 24579] core_worker.cc:2465: ...`: the C++ log format (spdlog), levels
# debug to error. Fatal lines (`F`) pass: the process dies right after them.
_RAY_CORE_LINE = re.compile(rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [DIWE] \d+ \d+\] [\w./-]+:\d+: ")
_DECIDED_AFTER = 64  # bytes of a line after which the pattern has matched or not


class _LineFilter:
    """Copies bytes to `out` as they come (a progress bar redraws with `\r`, without a newline), except Ray
    core log lines, up to and with their newline. Such a line may start anywhere: Ray writes it where the
    cursor is, often right after a bar drawn without a newline. Bytes that may still become one (from a
    `[` on) are held until it is decided, at most `_DECIDED_AFTER` bytes or the end of their line."""

    def __init__(self, out: int):
        self.out = out
        self.held = b""  # undecided bytes: from a `[` that may start a Ray line
        self.dropping = False  # inside a Ray line until its newline

    def feed(self, data: bytes) -> None:
        self.held += data
        passed = bytearray()
        while self.held:
            if self.dropping:
                end = self.held.find(b"\n")
                self.held = b"" if end < 0 else self.held[end + 1 :]
                self.dropping = end < 0
                continue
            start = self.held.find(b"[")
            if start < 0:
                passed += self.held
                self.held = b""
                break
            passed += self.held[:start]
            self.held = self.held[start:]
            if _RAY_CORE_LINE.match(self.held):
                self.dropping = True
            elif self._undecided():
                break
            else:
                passed += self.held[:1]
                self.held = self.held[1:]
        if passed:
            os.write(self.out, bytes(passed))

    def _undecided(self) -> bool:
        return b"\n" not in self.held and len(self.held) < _DECIDED_AFTER and _may_become_ray_line(self.held)

    def close(self) -> None:
        if self.held and not self.dropping and not _RAY_CORE_LINE.match(self.held):
            os.write(self.out, self.held)


def _may_become_ray_line(head: bytes) -> bool:
    """Whether `head` could still grow into a Ray core log line (the checked prefix agrees so far)."""
    template = b"[0000-00-00 00:00:00,000 "
    for have, want in zip(head, template, strict=False):
        if (want == ord("0") and not chr(have).isdigit()) or (want != ord("0") and have != want):
            return False
    return True


@contextlib.contextmanager
def without_ray_core_lines() -> Iterator[None]:
    """Inside: this process's stderr (fd 2) goes through a filter that drops Ray core log lines."""
    sys.stderr.flush()
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    line_filter = _LineFilter(terminal)

    def copy() -> None:
        while chunk := os.read(read_end, 65536):
            line_filter.feed(chunk)
        line_filter.close()

    thread = threading.Thread(target=copy, name="sfp-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # the pipe's write end closes, unless a child process still holds it
        thread.join(timeout=2.0)
        if not thread.is_alive():  # else it goes on filtering what that child writes
            os.close(read_end)
            os.close(terminal)
