"""Where data lives: URIs plus storage options -> pyarrow filesystems, and what may be recorded about them.

Local paths, `file://`, `s3://` and `gs://` use pyarrow's native filesystems;
any other scheme goes through fsspec (and every scheme does where pyarrow
lacks a call: the output lease's exclusive create). Credentials come from the environment
(the storage library's usual chain) or from storage options; either way they
never reach a log line, a manifest or a Parquet file: `public_uri`,
`public_options` and `Redactor` are what the rest of the pipeline records.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pyarrow.fs as pafs
from fsspec import AbstractFileSystem

from sfp_core import check_uri, credentials_moved_to_options, public_uri, user_info, without_user_info

from .secrets import MIN_REDACTED_LENGTH, REDACTED, holds_secret, secret_value_kind, secret_values

# What a URI built from a path keeps unquoted (RFC 3986 path characters, minus those that start a query,
# a fragment or an escape, and minus `:`, so a key holding `::` never reads as a chained URL).
_PATH_SAFE = "/!$&'()*+,;=@-._~"

# Loggers that write whole requests, the Authorization header (with the access key id) included, at DEBUG.
_REQUEST_LOGGERS = ("botocore.endpoint",)

# fsspec / boto style option names -> pyarrow S3FileSystem arguments.
_S3_ALIASES = {
    "region_name": "region",
    "anon": "anonymous",
    "key": "access_key",
    "aws_access_key_id": "access_key",
    "secret": "secret_key",
    "aws_secret_access_key": "secret_key",
    "token": "session_token",
    "aws_session_token": "session_token",
}
_GCS_ALIASES = {"anon": "anonymous", "token": "access_token", "project": "project_id"}


def public_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Storage options with every credential-like value replaced, recursively."""

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: REDACTED if holds_secret(str(k), v) else scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [scrub(v) for v in value]
        if isinstance(value, str):
            if secret_value_kind(value):
                return REDACTED
            return public_uri(value) if "://" in value else value
        return value if isinstance(value, (int, float, bool)) or value is None else type(value).__name__

    return scrub(dict(options or {}))


@dataclass(frozen=True)
class Redactor:
    """Replaces known secret values in text that is about to be logged or stored."""

    secrets: tuple[str, ...] = ()

    @classmethod
    def for_options(cls, *option_sets: dict[str, Any] | None, uris: tuple[str, ...] = ()) -> Redactor:
        """Redacts the credentials in these options, in the environment and in the URIs' user info."""
        found = secret_values(*option_sets)
        for uri in uris:
            for part in user_info(uri):
                found.update(p for p in (part, quote(part, safe="")) if len(p) >= MIN_REDACTED_LENGTH)
        # Longest first, so a secret containing another is replaced whole.
        return cls(tuple(sorted(found, key=len, reverse=True)))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return without_user_info(text)

    def __repr__(self) -> str:
        return f"Redactor({len(self.secrets)} secrets)"


class _RedactingFilter(logging.Filter):
    def __init__(self, redact: Redactor):
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


@contextlib.contextmanager
def redacted_logs(redact: Redactor) -> Iterator[None]:
    """While the block runs, the request logs of storage clients here (botocore's, at DEBUG) pass through `redact`."""
    guard = _RedactingFilter(redact)
    loggers = [logging.getLogger(name) for name in _REQUEST_LOGGERS]
    for logger in loggers:
        logger.addFilter(guard)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(guard)


@dataclass(frozen=True)
class Location:
    """A directory (or file) in some filesystem; picklable, so Ray tasks rebuild its filesystem themselves."""

    scheme: str  # "file", "s3", "gs", or an fsspec protocol
    path: str  # the path as the filesystem names it: "/abs/dir", "bucket/prefix"
    options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    given_uri: str = field(default="", repr=False, compare=False)  # for fsspec schemes

    @classmethod
    def parse(cls, uri: str, storage_options: dict[str, Any] | None = None, what: str = "storage") -> Location:
        """The location a URI names; UnsupportedURI (naming `what`) for a chained URL or a protocol we do not
        support, before anything is opened.

        A plain path is taken as written. A URI's path is percent-decoded and never split at `?` or `#`
        (keys are data): `file:///d/sp%20ace.jpg` and `s3://b/a#1.jpg` name `sp ace.jpg` and `a#1.jpg`,
        so the rows' own `uri` column (`uri_of`) reads back as the file it names.
        """
        options = dict(storage_options or {})
        scheme = check_uri(uri, what)
        if scheme is None:  # a plain local path
            return cls("file", _local_path(uri), options)
        located, moved = credentials_moved_to_options(uri, options)
        rest = unquote(located.split("://", 1)[1])
        if scheme == "file":
            return cls("file", _local_path(rest), options)
        if scheme in ("s3", "s3a", "gs", "gcs"):
            if not rest.split("/", 1)[0]:
                raise ValueError(f"{public_uri(uri)}: no bucket in the URI")
            path = posixpath.normpath(rest).rstrip("/")
            if path.startswith(".."):
                raise ValueError(f"{public_uri(uri)}: the path leaves the bucket")
            if scheme.startswith("s3"):
                return cls("s3", path, _with_environment_endpoint(moved))
            return cls("gs", path, moved)
        import fsspec

        _, path = fsspec.core.url_to_fs(uri, **options)
        return cls(scheme, path.rstrip("/") or path, options, given_uri=uri)

    @property
    def uri(self) -> str:
        """Public URI of this location (never with credentials)."""
        return self.uri_of(self.path)

    def uri_of(self, path: str) -> str:
        """The URI of a filesystem path inside this location, built by quoting: a key holding `#`, `?`, `%`,
        spaces or newlines stays one key (`path_of_uri` gives it back)."""
        return f"{self.scheme}://{quote(path.removeprefix(self.scheme + '://'), safe=_PATH_SAFE)}"

    def join(self, *names: str) -> str:
        """Filesystem path of `names` under this location; names never climb out of it."""
        for name in names:
            if not name or name.startswith("/") or ".." in name.split("/"):
                raise ValueError(f"refusing path component {name!r} under {self.uri}")
        return posixpath.join(self.path, *names)

    def filesystem(self) -> pafs.FileSystem:
        return _filesystem(self.scheme, json.dumps(self.options, sort_keys=True, default=repr), self.given_uri)

    def fsspec(self) -> AbstractFileSystem:
        """The same storage through fsspec; `path` names the same place in it."""
        import fsspec

        if self.scheme == "file":
            return fsspec.filesystem("file")
        if self.given_uri:
            return fsspec.core.url_to_fs(self.given_uri, **self.options)[0]
        options = fsspec_options(self.uri, self.options)
        if self.scheme == "s3":  # one retry loop, the caller's (`retry.Retry`), not botocore's 5 attempts inside it
            options["config_kwargs"] = {"retries": {"max_attempts": 2}, **options.get("config_kwargs", {})}
        return fsspec.filesystem(self.scheme, **options)


def path_of_uri(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[Location, str]:
    """The storage and the exact path behind a URI that `Location.uri_of` built (the rows' `uri` column)."""
    scheme, sep, quoted = uri.partition("://")
    if not sep:
        raise ValueError(f"{uri!r} is not a URI")
    check_uri(uri, "image")
    path = unquote(quoted)
    if scheme == "file":
        return Location("file", "/", dict(storage_options or {})), path
    root = path.split("/", 1)[0]
    return Location(scheme, root, dict(storage_options or {}), given_uri=f"{scheme}://{quote(root)}"), path


def endpoint_of(location: Location) -> str | None:
    """`host[:port]` of the endpoint an s3:// or gs:// location's options (or AWS_ENDPOINT_URL) name; None for
    the provider's own endpoint and for other storage."""
    aliases = {"s3": _S3_ALIASES, "gs": _GCS_ALIASES}.get(location.scheme)
    if aliases is None:
        return None
    return _endpoint(_aliased(dict(location.options), aliases)).get("endpoint_override")


def is_local_uri(uri: str) -> bool:
    """A plain path or file:// URI: storage that only the machine running the code can see."""
    scheme = urlsplit(uri).scheme
    return not scheme or len(scheme) == 1 or scheme == "file"


def fsspec_options(uri: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Options are named the pipeline's way (`region`); s3fs wants the region in `client_kwargs`."""
    options = dict(storage_options or {})
    if urlsplit(uri).scheme in ("s3", "s3a"):
        region = options.pop("region_name", None)
        region = options.pop("region", region)
        if region:
            options["client_kwargs"] = {**options.get("client_kwargs", {}), "region_name": region}
    return options


# Environment variables the AWS SDKs read for an S3-compatible endpoint and the region, in order of precedence.
_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")


def _with_environment_endpoint(options: dict[str, Any]) -> dict[str, Any]:
    """S3 options with the endpoint and region the environment names, where the options name none.

    s3fs (botocore) reads `AWS_ENDPOINT_URL`, pyarrow's S3 client does not: without this, one run's
    calls would go to two different servers. Resolved once, in the driver, the options then travel
    with the Location to every worker.
    """
    client = options.get("client_kwargs") or {}
    if not any(options.get(name) or client.get(name) for name in ("endpoint_url", "endpoint", "endpoint_override")):
        endpoint = next((os.environ[name] for name in _ENDPOINT_ENV if os.environ.get(name)), None)
        if endpoint:
            options["endpoint_url"] = endpoint
    if not any(options.get(name) or client.get(name) for name in ("region", "region_name")):
        region = next((os.environ[name] for name in _REGION_ENV if os.environ.get(name)), None)
        if region:
            options["region"] = region
    return options


def _local_path(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path)).rstrip("/") or "/"


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, options_json: str, given_uri: str) -> pafs.FileSystem:
    """One filesystem per process and location kind (cached: S3 clients are costly to build)."""
    options = json.loads(options_json)
    if scheme == "file":
        return pafs.LocalFileSystem()
    if scheme == "s3":
        return _native(pafs.S3FileSystem, "S3", _endpoint(_aliased(options, _S3_ALIASES)))
    if scheme == "gs":
        return _native(pafs.GcsFileSystem, "GCS", _endpoint(_aliased(options, _GCS_ALIASES)))
    import fsspec

    fs, _ = fsspec.core.url_to_fs(given_uri, **options)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _aliased(options: dict[str, Any], aliases: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    client_kwargs = options.get("client_kwargs") or {}
    for name, value in {**client_kwargs, **{k: v for k, v in options.items() if k != "client_kwargs"}}.items():
        out[aliases.get(name, name)] = value
    return out


def _endpoint(options: dict[str, Any]) -> dict[str, Any]:
    """`endpoint_url="http://host:port"` (fsspec style) -> pyarrow's `endpoint_override` and `scheme`."""
    url = options.pop("endpoint_url", None) or options.pop("endpoint", None)
    if url:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        options.setdefault("endpoint_override", parts.netloc)
        options.setdefault("scheme", parts.scheme)
    return options


def _native(cls: type, label: str, options: dict[str, Any]) -> pafs.FileSystem:
    try:
        return cls(**options)
    except TypeError as exc:
        names = ", ".join(sorted(options))
        raise ValueError(f"{label} storage options not understood ({names}): {exc}") from None
