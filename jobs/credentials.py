"""Refuse credentials in job files: they end up in git, in logs and in run manifests.

Credentials belong in the environment or the storage library's own config
(`AWS_ACCESS_KEY_ID`, `~/.aws/credentials`, instance roles, `gcloud auth`,
workload identity). Messages name the field but never repeat the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

_SECRET_KEY_NAMES = frozenset({"key", "secret", "token", "password", "passwd", "pwd", "passphrase"})
_SECRET_KEY_PARTS = (
    "secret",
    "password",
    "passwd",
    "private_key",
    "access_key",
    "account_key",
    "api_key",
    "apikey",
    "session_token",
    "access_token",
    "auth_token",
    "refresh_token",
    "sas_token",
    "credential",
    "connection_string",
)
# gcsfs's `token` also takes these modes, which name a credential source rather than hold one.
_TOKEN_MODES = frozenset({"anon", "google_default", "cloud", "cache", "browser"})

_SECRET_VALUES = {
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    "a Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "a Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "a Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    "a JSON web token": re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    "a URL with a password": re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"),
    "a signed URL": re.compile(r"(?i)(?:x-amz-signature|x-amz-security-token|x-goog-signature|[?&]sig)="),
    "a storage account key": re.compile(r"(?i)\baccountkey="),
}

ADVICE = "keep credentials in the environment or the storage library's config (e.g. AWS_* variables, ~/.aws)"


def secret_key_name(name: str) -> bool:
    """Whether a mapping key (or an environment variable's name) is one that holds credentials."""
    lowered = name.lower().replace("-", "_")
    return lowered in _SECRET_KEY_NAMES or any(part in lowered for part in _SECRET_KEY_PARTS)


def secret_value_kind(value: str) -> str | None:
    """What kind of credential a string looks like, or None."""
    return next((kind for kind, pattern in _SECRET_VALUES.items() if pattern.search(value)), None)


def find_secrets(data: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(field, problem) for every key or value in a loaded job that looks like a credential."""
    if isinstance(data, dict):
        for key, value in data.items():
            field = f"{path}.{key}" if path else str(key)
            exempt = str(key).lower() == "token" and isinstance(value, str) and value in _TOKEN_MODES
            if secret_key_name(str(key)) and value not in (None, "", {}) and not exempt:
                yield field, f"looks like a credential; job files must not hold secrets: {ADVICE}"
            else:
                yield from find_secrets(value, field)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from find_secrets(value, f"{path}.{index}")
    elif isinstance(data, str) and (kind := secret_value_kind(data)):
        yield path, f"value looks like {kind}; job files must not hold secrets: {ADVICE}"
