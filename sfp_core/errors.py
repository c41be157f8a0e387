"""Whose fault an error is: the one exception hierarchy every layer raises and the CLI maps to exit codes.

The classes say who can fix the problem, not where it happened:
- `UserError`: the caller's input is wrong (a missing file, a bad setting); retrying changes nothing.
- `RetryableError`: storage or cluster trouble; the same request may succeed later.
- `BusyError`: someone else is working on the same output right now.
Anything else that escapes is a bug. See docs/design.md ("Errors").
"""

from __future__ import annotations


class SFPLabelError(Exception):
    """Base of every error this project raises on purpose."""


class UserError(SFPLabelError):
    """The request names something missing or wrong; the message says what and how to fix it."""


class RetryableError(SFPLabelError):
    """Trouble outside the request (storage outage, lost cluster); running it again may succeed."""


class BusyError(SFPLabelError):
    """Another run holds the resource; nothing was done."""
