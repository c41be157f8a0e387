"""Retrying storage calls through outages: bounded exponential backoff, then a clear failure.

Object stores fail transiently (a restarting server, throttling, a dropped
connection); a run should ride out a few seconds of that rather than die,
and must never turn an outage into error rows (an incremental re-run skips
rows already written, so a wrong error row would stick). Only transient
errors are retried; a missing file or a refused permission is the file's
own problem and is raised at once. When the storage stays away for longer
than the policy's patience, `StorageUnavailable` names what was being done
and where, and the run fails; the next incremental run picks up from there.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from .errors import HostUnresolvable, StorageUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# Substrings of the messages of pyarrow (AWS SDK, GCS client) and fsspec errors that mean "try again".
_TRANSIENT_MARKERS = (
    "NETWORK_CONNECTION",
    "SLOW_DOWN",
    "SERVICE_UNAVAILABLE",
    "INTERNAL_FAILURE",
    "REQUEST_TIMEOUT",
    "HTTP status 500",
    "HTTP status 502",
    "HTTP status 503",
    "HTTP status 504",
    "curlCode",
    "Could not connect",
    "Connection refused",
    "Connection reset",
    "timed out",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    # s3fs turns a botocore ClientError it has no class for into OSError(EIO, "An error occurred (<code>) ..."):
    # the codes S3 documents as worth retrying, and bare statuses (a HEAD's error has no body to name a code).
    "(InternalError)",
    "(ServiceUnavailable)",
    "(SlowDown)",
    "(RequestTimeout)",
    "(Throttling",
    "(500)",
    "(502)",
    "(503)",
    "(504)",
)
# S3 error codes worth retrying (throttling, a server busy or restarting). s3fs raises an error of a code it
# knows as a Python error carrying only the server's message ("We encountered an internal error. Please try
# again.", errno EREMOTEIO or EBUSY), so the code is read from the botocore error it keeps as the cause.
_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "OperationAborted",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "500",
    "502",
    "503",
    "504",
}
# botocore / aiohttp exception classes (matched by name: neither library is a dependency of this module).
_TRANSIENT_TYPES = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ServerDisconnectedError",
}
# ... and those that say the host name does not resolve (curl through pyarrow, glibc, macOS, Windows).
_UNRESOLVABLE_MARKERS = (
    "Could not resolve host",
    "Couldn't resolve host",
    "Name or service not known",
    "Temporary failure in name resolution",
    "nodename nor servname",
    "getaddrinfo failed",
    "No address associated with hostname",
)
_PER_FILE = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
# What storage clients say when the credentials are missing, wrong, or lack a permission.
_ACCESS_DENIED_MARKERS = (
    "ACCESS_DENIED",
    "AccessDenied",
    "Access Denied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "Unable to locate credentials",
    "NoCredentialsError",
    "403",
)


def is_access_denied(exc: BaseException) -> bool:
    """Whether `exc` says the storage refused the credentials (the user's to fix, never retried)."""
    if isinstance(exc, PermissionError):
        return True
    if {cls.__name__ for cls in type(exc).__mro__} & {"NoCredentialsError", "PartialCredentialsError"}:
        return True
    return isinstance(exc, OSError) and any(marker in str(exc) for marker in _ACCESS_DENIED_MARKERS)


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` looks like an outage or throttling (worth retrying) rather than a problem of one file."""
    if isinstance(exc, _PER_FILE):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if _TRANSIENT_TYPES & {cls.__name__ for cls in type(exc).__mro__}:
        return True
    if isinstance(exc, OSError) and _error_code(exc) in _TRANSIENT_CODES:
        return True
    return isinstance(exc, OSError) and any(marker in str(exc) for marker in _TRANSIENT_MARKERS)


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code behind `exc`: that of the first error in its chain of causes with a botocore-style
    `response` ({"Error": {"Code": ...}}), if any."""
    for seen in _causes(exc):
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            return str(response["Error"].get("Code", "")) or None
    return None


def is_unresolvable(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says a host name does not resolve."""
    return any(
        isinstance(seen, socket.gaierror) or any(marker in str(seen) for marker in _UNRESOLVABLE_MARKERS)
        for seen in _causes(exc)
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it, and so on: at most 8 links (a chain can loop)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


@dataclass(frozen=True)
class Retry:
    """Retry transient storage errors with exponential backoff (with jitter) for up to `patience_s` seconds."""

    patience_s: float = 120.0
    first_delay_s: float = 0.5
    max_delay_s: float = 10.0

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn()`, retried while it fails transiently; `what` (e.g. "reading s3://b/k") names it in the error."""
        started = time.monotonic()
        delay = self.first_delay_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                waited = time.monotonic() - started
                if waited >= self.patience_s:
                    gave_up = HostUnresolvable if is_unresolvable(exc) else StorageUnavailable
                    raise gave_up(
                        f"storage unavailable while {what}: gave up after {attempt} attempts over {waited:.0f}s "
                        f"(patience {self.patience_s:g}s); last error: {type(exc).__name__}: {exc}"
                    ) from None
                pause = min(delay * random.uniform(0.5, 1.0), self.patience_s - waited)
                log.warning("%s failed (attempt %d), retrying in %.1fs: %s", what, attempt, pause, exc)
                time.sleep(max(pause, 0.0))
                delay = min(delay * 2, self.max_delay_s)

    def brief(self, cap_s: float = 5.0) -> Retry:
        """The same policy with at most `cap_s` of patience: for clean-up after a run has already failed."""
        return Retry(min(self.patience_s, cap_s), self.first_delay_s, self.max_delay_s)
