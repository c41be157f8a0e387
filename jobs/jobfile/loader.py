"""Read a job file: safe YAML, `${ENV}` interpolation, `--set` overrides, secret refusal, schema.

The order matters: interpolation and overrides happen before the credential
check, so a secret cannot slip in through either, and before the schema, so
the schema sees exactly what will run.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline import find_secrets, is_secret_name

from .errors import JobError
from .spec import JobSpec, describe_errors

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """The job file's mapping, or a JobError saying where the YAML is broken."""
    stream = io.StringIO(text)
    stream.name = source  # YAML errors then say "in <job file>, line 3"
    try:
        data = yaml.load(stream, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise JobError(source, [("", f"not valid YAML: {exc}")]) from exc
    if not isinstance(data, dict):
        raise JobError(source, [("", f"a job file is a YAML mapping, got {type(data).__name__}")])
    return data


def interpolate(data: Any, environ: Mapping[str, str], issues: list[tuple[str, str]], path: str = "") -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in string values; `$$` is a literal `$`.

    Variables whose names look like credentials are refused: job files
    describe runs, and interpolating a secret would copy it into manifests.
    """
    if isinstance(data, dict):
        return {
            key: interpolate(value, environ, issues, f"{path}.{key}" if path else str(key))
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [interpolate(value, environ, issues, f"{path}.{index}") for index, value in enumerate(data)]
    if not isinstance(data, str):
        return data

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name is None:
            return "$"
        if is_secret_name(name):
            issues.append((path, f"${{{name}}} looks like a credential; only non-secret values may be interpolated"))
            return ""
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        issues.append((path, f"environment variable {name} is not set (write ${{{name}:-default}} for a fallback)"))
        return ""

    return _ENV_REF.sub(substitute, data)


def apply_override(data: dict[str, Any], assignment: str, issues: list[tuple[str, str]]) -> None:
    """Apply one `--set dotted.key=value`; the value is parsed as YAML (`true`, `4`, `[1, 2]`, `null`)."""
    key, sep, raw = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        issues.append((f"--set {assignment}", "expected dotted.key=value, e.g. --set model.weights=random"))
        return
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    target = data
    for depth, part in enumerate(parts[:-1]):
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            issues.append((".".join(parts[: depth + 1]), f"is not a mapping, so --set {key} cannot go inside it"))
            return
        target = child
    target[parts[-1]] = value


def load_spec(path: str | Path, overrides: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> JobSpec:
    """Load and validate a job file; every problem found is reported at once in a JobError."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise JobError(source, [("", f"cannot read the job file: {exc.strerror or exc}")]) from exc
    data = parse_yaml(text, source)
    issues: list[tuple[str, str]] = []
    data = interpolate(data, os.environ if environ is None else environ, issues)
    for assignment in overrides:
        apply_override(data, assignment, issues)
    data.setdefault("name", Path(path).stem)
    issues += find_secrets(data)
    if issues:
        raise JobError(source, issues)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise JobError(source, describe_errors(exc)) from exc
