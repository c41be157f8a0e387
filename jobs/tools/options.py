"""Storage for the output tools: `-o key=value` options from the command line, and fsspec locations
(ground-truth folders, source images) for local folders and object stores alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import fsspec
import yaml
from fsspec import AbstractFileSystem

from pipeline import SECRET_ADVICE, find_secrets, fsspec_options
from sfp_core import UserError, check_uri


def open_location(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """The filesystem and root path of `uri` (a relative local path becomes absolute); chained URLs and
    protocols we do not support are refused before anything is opened."""
    check_uri(uri, "storage")
    fs, path = fsspec.core.url_to_fs(uri, **fsspec_options(uri, storage_options))
    return fs, path.rstrip("/")


class StorageOptionError(UserError, ValueError):
    """A command-line storage option is malformed or holds a credential."""


def parse_storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs from the command line (values parsed as YAML); credentials are refused."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise StorageOptionError(
                f"storage option {pair!r}: expected key=value, e.g. endpoint_url=http://127.0.0.1:8333"
            )
        options[key] = yaml.safe_load(raw) if raw else ""
    leaked = [field for field, _ in find_secrets(options)]
    if leaked:
        raise StorageOptionError(f"storage options {', '.join(leaked)} look like credentials: {SECRET_ADVICE}")
    return options
