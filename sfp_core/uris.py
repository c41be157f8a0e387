"""Which URIs the project reads and writes, and what of a URI may be shown: one rule for every layer.

Weights, inputs, list entries, outputs and the rows' `uri` column all pass
through `check_uri`, so a URI can never make us fetch from somewhere the
user did not choose as storage: fsspec's chained URLs (`simplecache::http://`)
and protocols outside `SUPPORTED_PROTOCOLS` (http, ftp, archives, hubs) are
refused before anything is opened. `public_uri` and `without_user_info` are
what may be written or printed of a URI (docs/design.md, "Secrets").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import UserError

# Protocol -> what it is. Everything else is refused, whatever fsspec could open.
SUPPORTED_PROTOCOLS: dict[str, str] = {
    "file": "local files (or a plain path)",
    "s3": "Amazon S3 and S3-compatible stores",
    "s3a": "the same, Hadoop's name",
    "gs": "Google Cloud Storage",
    "gcs": "the same",
    "memory": "fsspec's in-process memory (tests, notebooks)",
}
CHAIN_SEPARATOR = "::"

# `scheme://user:password@` at the start of a URI. The user part has no `/`, `:` or `@`; the password may hold
# `/` (an AWS secret does) and runs to the first `@` (a password's own `@` must be written %40, as in any URI).
_USER_INFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+:[^\s@]*@")
# The same anywhere in a text, up to the last `@` of the word: redaction may take a path's `@` with it.
URI_WITH_PASSWORD = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+:\S*@")
# `scheme://user@` (no password): not a credential by itself, but never part of a URI we record.
_USER_ONLY = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@?#]+@")


class UnsupportedURI(UserError, ValueError):
    """A URI names a protocol we do not read or write, or chains several (`a::b`)."""


def protocol_of(uri: str) -> str | None:
    """The URI's protocol in lower case, or None for a plain local path (`C:` drive letters included)."""
    scheme = urlsplit(uri).scheme
    return scheme.lower() if len(scheme) > 1 else None


def is_uri(text: str) -> bool:
    """Whether a weights string names storage rather than a tag or a path (`check_uri` then judges it)."""
    return "://" in text or CHAIN_SEPARATOR in text


def check_uri(uri: str, what: str) -> str | None:
    """The protocol of `uri` (None for a local path) if we support it; else UnsupportedURI naming `what`."""
    protocol = protocol_of(uri)
    if protocol is None:
        return None
    if CHAIN_SEPARATOR in uri:
        raise UnsupportedURI(
            f"{what} {public_uri(uri)}: chained URLs ({CHAIN_SEPARATOR}) are not accepted; "
            "name the storage directly (s3://bucket/key, gs://..., a local path)"
        )
    if protocol not in SUPPORTED_PROTOCOLS:
        raise UnsupportedURI(
            f"{what} {public_uri(uri)}: protocol {protocol}:// is not supported "
            f"(supported: {', '.join(f'{name}://' for name in SUPPORTED_PROTOCOLS)}, or a local path)"
        )
    return protocol


def without_user_info(text: str) -> str:
    """`text` with the user info of every URI in it replaced by `***` (whatever the password holds)."""
    return _USER_ONLY.sub(r"\1***@", URI_WITH_PASSWORD.sub(r"\1***@", text))


def user_info(uri: str) -> tuple[str, str]:
    """(user, password) of the URI's `user:password@`, percent-decoded; empty strings where it has none."""
    match = _USER_INFO.match(uri)
    if match is None:
        return "", ""
    user, _, password = match.group(0)[len(match.group(1)) : -1].partition(":")
    return unquote(user), unquote(password)


def credentials_moved_to_options(uri: str, options: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(the URI without user info, the storage options with its user and password as `key` / `secret`):
    the one way a credential written into a URI reaches the storage library, never a bucket or a path.
    Options given explicitly win over the URI's."""
    moved = dict(options or {})
    user, password = user_info(uri)
    if user or password:
        moved.setdefault("key", user)
        moved.setdefault("secret", password)
    return strip_user_info(uri), moved


def has_user_password(text: str) -> bool:
    """Whether `text` holds a URI with a password in its user info."""
    return URI_WITH_PASSWORD.search(text) is not None


def strip_user_info(uri: str) -> str:
    """The URI without its leading `user:password@` or `user@`; the rest (query, fragment) as written."""
    stripped = _USER_INFO.sub(r"\1", uri, count=1)
    if stripped == uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if "@" in authority:
            return f"{scheme}://{rest[authority.rindex('@') + 1 :]}"
    return stripped


def public_uri(uri: str) -> str:
    """The URI as it may be recorded: no user info, query string or fragment; every chained part alike."""
    if CHAIN_SEPARATOR in uri:
        return CHAIN_SEPARATOR.join(public_uri(part) for part in uri.split(CHAIN_SEPARATOR))
    if protocol_of(uri) is None:
        return uri
    parts = urlsplit(strip_user_info(uri))
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
