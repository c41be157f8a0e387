"""What counts as a secret: one rule set for refusing credentials (job files, --set, -o) and for redacting
them (manifests, logs, error messages, URIs).

Credentials belong in the environment or the storage library's own config
(`AWS_*` variables, `~/.aws`, instance roles, `gcloud auth`); see
docs/design.md ("Secrets").
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from sfp_core import URI_WITH_PASSWORD

REDACTED = "<redacted>"

# Option names (lower case, "-" read as "_") that hold a credential whatever else they say ...
_SECRET_NAMES = frozenset(
    {"key", "secret", "token", "password", "passwd", "pwd", "passphrase", "access_key_id", "aws_access_key_id"}
)
# ... and parts that make any name one.
_SECRET_NAME_PARTS = (
    "secret",
    "password",
    "passwd",
    "passphrase",
    "private",
    "access_key",
    "account_key",
    "api_key",
    "apikey",
    "token",
    "credential",
    "connection_string",
    "signature",
    "sas",
)
# gcsfs's `token` also takes these modes, which name a credential source rather than hold one.
_TOKEN_MODES = frozenset({"anon", "google_default", "cloud", "cache", "browser"})

# Values that are credentials wherever they appear.
_SECRET_VALUES = {
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    "a Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "a Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "a Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    "a JSON web token": re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    "a URL with a password": URI_WITH_PASSWORD,
    "a signed URL": re.compile(r"(?i)(?:x-amz-signature|x-amz-security-token|x-goog-signature|[?&]sig)="),
    "a storage account key": re.compile(r"(?i)\baccountkey="),
}

ADVICE = "keep credentials in the environment or the storage library's config (e.g. AWS_* variables, ~/.aws)"
# Values shorter than this are not redacted from text: "***" for every "ab" would garble messages.
MIN_REDACTED_LENGTH = 4
# Environment values are only taken as credentials from this length on: flags such as `...TOKEN_AUTH=false`
# are not secrets, and redacting "false" would garble every manifest.
MIN_ENV_SECRET_LENGTH = 8


def is_secret_name(name: str) -> bool:
    """Whether an option or mapping key with this name holds a credential."""
    lowered = name.lower().replace("-", "_")
    return lowered in _SECRET_NAMES or any(part in lowered for part in _SECRET_NAME_PARTS)


def is_secret_env(name: str) -> bool:
    """Whether an environment variable holds a credential (`AWS_SECRET_ACCESS_KEY`, `HF_TOKEN`, ...).

    Only name parts count here: short exact names such as `PWD` (the shell's
    working directory) are not credentials in the environment.
    """
    lowered = name.lower()
    return any(part in lowered for part in _SECRET_NAME_PARTS)


def holds_secret(name: str, value: Any) -> bool:
    """Whether `name: value` carries a credential (a gcsfs token mode such as `anon` does not)."""
    if value in (None, "", {}, []) or isinstance(value, bool):
        return False
    if name.lower() == "token" and isinstance(value, str) and value in _TOKEN_MODES:
        return False
    return is_secret_name(name)


def secret_value_kind(value: str) -> str | None:
    """What kind of credential a string looks like, or None."""
    return next((kind for kind, pattern in _SECRET_VALUES.items() if pattern.search(value)), None)


def find_secrets(data: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(field, problem) for every key or value in nested data that is or looks like a credential."""
    if isinstance(data, dict):
        for key, value in data.items():
            field = f"{path}.{key}" if path else str(key)
            if holds_secret(str(key), value):
                yield field, f"looks like a credential; job files must not hold secrets: {ADVICE}"
            else:
                yield from find_secrets(value, field)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from find_secrets(value, f"{path}.{index}")
    elif isinstance(data, str) and (kind := secret_value_kind(data)):
        yield path, f"value looks like {kind}; job files must not hold secrets: {ADVICE}"


def environment_secrets(environ: Mapping[str, str] | None = None) -> set[str]:
    """The values of the credential-named variables of an environment (the process's by default)."""
    environ = os.environ if environ is None else environ
    return {value for name, value in environ.items() if len(value) >= MIN_ENV_SECRET_LENGTH and is_secret_env(name)}


def secret_values(*option_sets: Any) -> set[str]:
    """Every credential value in option mappings (recursively) and in the process environment."""
    found = environment_secrets()

    def collect(value: Any, secret: bool) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                collect(inner, secret or holds_secret(str(key), inner))
        elif isinstance(value, (list, tuple)):
            for inner in value:
                collect(inner, secret)
        elif secret and value not in (None, "") and not isinstance(value, bool):
            found.add(str(value))

    for options in option_sets:
        collect(options or {}, False)
    return {value for value in found if len(value) >= MIN_REDACTED_LENGTH}
