"""The pipeline's errors, placed in sfp_core's hierarchy (user / retryable / busy), and Ray's wrapper removed.

The CLI maps only the three base classes to exit codes; these subclasses say
what went wrong in words a user can act on.
"""

from __future__ import annotations

import re

from sfp_core import BusyError, RetryableError, UnsupportedURI, UserError


class InputNotFound(UserError, FileNotFoundError):
    """The input location does not exist."""


class InputHasNoImages(UserError):
    """The input holds no file with the request's extensions (and `input.allow_empty` is not set)."""


class InputUnusable(UserError, ValueError):
    """The input exists but is not what `input.format` reads: a list without its URI column, a table without
    its image column."""


# A URI names a protocol we do not read or write, or chains several (`simplecache::http://`): the rule and
# its error live in sfp_core (`sfp_core.check_uri`), which the weights share; the pipeline's name for it.
UnsupportedStorage = UnsupportedURI


class ForeignFilesInOutput(UserError):
    """The output folder holds files this project did not write; a run would mix with or delete them."""


class OutputNotADirectory(UserError):
    """The output location exists and is a file: a run writes a folder of files there."""


class OutputNotWritable(UserError, PermissionError):
    """The output location cannot be written by this user or these credentials."""


class OutputLabelledDifferently(UserError):
    """An incremental run's vocabulary or settings differ from those its output was labelled with."""


class StorageAccessDenied(UserError, PermissionError):
    """The storage refused these credentials (missing, wrong or without permission)."""


class StorageEndpointUnknown(UserError, ValueError):
    """The storage endpoint's host name does not exist (a typo in `endpoint_url`), found before any retry."""


class ClusterCannotHostActor(UserError):
    """No node of a cluster that cannot grow has what one SFP actor asks (a GPU on a machine without one)."""


class StorageUnavailable(RetryableError, RuntimeError):
    """Storage kept failing transiently for longer than the retry policy's patience."""


class HostUnresolvable(StorageUnavailable):
    """As StorageUnavailable, and the last failure was that the storage's host name does not resolve: for a
    list naming images on many hosts, that is one entry's problem, not the run's."""


class LeaseHeld(BusyError, RuntimeError):
    """Another run holds the output's lease (or just took it)."""


class OutputVanished(RetryableError, RuntimeError):
    """The output (its bucket, its folder) was deleted while a run was writing to it."""


class LeaseLost(RetryableError, RuntimeError):
    """The lease expired and another run took it over while this run was still writing."""


def unwrap_task_error(exc: BaseException) -> BaseException:
    """The exception a Ray task or actor raised, without Ray's wrapper (whose text is Ray's own hints).

    Ray keeps the original in `cause`; wrappers may nest (a task error inside
    an actor error), so this follows the chain to the innermost one.
    """
    seen = 0
    while seen < 8:
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException) or cause is exc:
            return exc
        exc, seen = cause, seen + 1
    return exc


def root_cause(exc: BaseException) -> str:
    """One line: the exception type and the last line of its message (Ray wraps the cause's traceback)."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def access_denied(source_uri: str, output_uri: str, cause: str) -> StorageAccessDenied:
    """Refused credentials, said plainly; `cause` is already one redacted line."""
    return StorageAccessDenied(
        f"access denied by the storage of {source_uri} or {output_uri} ({cause}); "
        "check the credentials in the environment"
    )
