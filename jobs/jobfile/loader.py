"""Read a job file: safe YAML, `${ENV}` interpolation, `--set` overrides, secret refusal, schema.

The order matters: interpolation and overrides happen before the credential
check, so a secret cannot slip in through either, and before the schema, so
the schema sees exactly what will run.

A job file is untrusted input: a regular UTF-8 file of at most
`MAX_JOB_FILE_BYTES`, plain YAML only (no anchors or aliases, so no alias
bomb; no explicit `!!` tags), nested at most `MAX_DEPTH` deep. Whatever the
YAML library makes of anything else is reported as a JobError, never a
traceback.
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

from pipeline import environment_secrets, find_secrets, is_secret_name
from sfp_core.vocabulary import read_small_text

from .errors import JobError
from .spec import JobSpec, describe_errors

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_JOB_FILE_BYTES = 1 << 20  # a job file is a page of YAML, not a data set
MAX_DEPTH = 32  # a job file nests four levels; storage options a few more


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases, explicit tags, deep nesting or duplicate keys."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", event.start_mark)
        if getattr(event, "tag", None) not in (None, "!"):
            raise yaml.composer.ComposerError(None, None, f"tags such as {event.tag} are not allowed", event.start_mark)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(None, None, "mapping keys must be plain names", key_node.start_mark)
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """The job file's mapping, or a JobError saying where the YAML is broken."""
    data = _load(text, source)
    if not isinstance(data, dict):
        raise JobError(source, [("", f"a job file is a YAML mapping, got {type(data).__name__}")])
    return data


def _load(text: str, source: str) -> Any:
    stream = io.StringIO(text)
    stream.name = source  # YAML errors then say "in <job file>, line 3"
    try:
        data = yaml.load(stream, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise JobError(source, [("", f"not valid YAML: {exc}")]) from exc
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a scalar YAML could not build
        raise JobError(source, [("", f"not a usable YAML value: {type(exc).__name__}: {exc}")]) from exc
    return data


def interpolate(data: Any, environ: Mapping[str, str], issues: list[tuple[str, str]], path: str = "") -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in string values; `$$` is a literal `$`.

    Variables whose names look like credentials are refused, and so are
    values that are a credential of the environment under another name: job
    files describe runs, and interpolating a secret would copy it into
    manifests. (Values shaped like credentials are refused after
    interpolation, with literal ones: `find_secrets`.)
    """
    credentials = environment_secrets(environ)
    return _interpolate(data, environ, credentials, issues, path)


def _interpolate(
    data: Any, environ: Mapping[str, str], credentials: set[str], issues: list[tuple[str, str]], path: str
) -> Any:
    if isinstance(data, dict):
        return {
            key: _interpolate(value, environ, credentials, issues, f"{path}.{key}" if path else str(key))
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [_interpolate(v, environ, credentials, issues, f"{path}.{i}") for i, v in enumerate(data)]
    if not isinstance(data, str):
        return data

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name is None:
            return "$"
        if is_secret_name(name):
            issues.append((path, f"${{{name}}} looks like a credential; only non-secret values may be interpolated"))
            return ""
        if name in environ and environ[name] in credentials:
            issues.append((path, f"${{{name}}} holds a credential; only non-secret values may be interpolated"))
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
        value = _load(raw, f"--set {key}") if raw.strip() else ""
    except JobError:
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
        text = read_small_text(Path(path), MAX_JOB_FILE_BYTES, "the job file", ValueError)
    except ValueError as exc:
        raise JobError(source, [("", str(exc))]) from exc
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
