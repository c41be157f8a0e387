"""Turn a validated job spec into what the pipeline takes: a Vocabulary, an SFPConfig, a known arch,
and from them the `LabelRequest`.

These checks need sfp_core (open_clip's model registry, the config's own
validation), so they live apart from the pure schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline import LabelRequest
from sfp_core import SFPConfig, Vocabulary, arch_depth
from sfp_core.templates import NAMED_TEMPLATES, read_templates

from .errors import JobError
from .loader import load_spec
from .spec import JobSpec, describe_errors

# Where `jobs/vocab/*.txt` lives when the project is installed rather than checked out.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class Job:
    """A job ready to run: the spec as written plus the objects built from it."""

    spec: JobSpec
    vocabulary: Vocabulary
    config: SFPConfig
    source: str

    def effective(self) -> dict[str, Any]:
        """The job as it will run: defaults filled in, `sfp` expanded to every SFPConfig field."""
        data = self.spec.model_dump(mode="json", exclude_none=True)
        data["sfp"] = self.config.to_dict()
        return data

    def request(self) -> LabelRequest:
        """The run this job describes, for `pipeline.label`."""
        spec = self.spec
        return LabelRequest(
            input=spec.input,
            output=spec.output.as_destination(),
            vocabulary=self.vocabulary,
            model=spec.model,
            config=self.config,
            resources=spec.resources,
            run_name=spec.name,
        )

    def describe(self) -> str:
        """One line saying what the job will do."""
        spec = self.spec
        low, high = spec.resources.actors
        return (
            f"job {spec.name}: {spec.input.uri} -> {spec.output.uri} ({spec.output.mode}); "
            f"{spec.model.arch} weights {spec.model.weights}; {self.vocabulary.num_classes} classes; "
            f"SFP config {self.config.config_hash()}; actors {low}..{high} x {spec.resources.gpus_per_actor:g} GPU"
        )


def vocabulary_path(file: str) -> Path:
    """A vocabulary file named relative to the working directory (what `ray job submit
    --working-dir .` uploads), else relative to the installed package (`jobs/vocab/voc21.txt`)."""
    path = Path(file).expanduser()
    if path.is_absolute() or path.exists():
        return path
    packaged = PACKAGE_ROOT / path
    return packaged if packaged.exists() else path


def _vocabulary(spec: JobSpec, issues: list[tuple[str, str]]) -> Vocabulary | None:
    try:
        if spec.vocabulary.file is not None:
            return Vocabulary.from_file(vocabulary_path(spec.vocabulary.file))
        return Vocabulary(spec.vocabulary.classes or [])
    except ValueError as exc:
        issues.append(("vocabulary.file" if spec.vocabulary.file is not None else "vocabulary.classes", str(exc)))
        return None


def _depth(arch: str, issues: list[tuple[str, str]]) -> int | None:
    """Number of transformer blocks of an open_clip ViT, or None (and an issue) if it is not one."""
    try:
        return arch_depth(arch)
    except ValueError as exc:
        issues.append(("model.arch", str(exc)))
        return None


def _templates_read(sfp: dict[str, Any], issues: list[tuple[str, str]]) -> dict[str, Any] | None:
    """`sfp` with a `templates` file (found like a vocabulary file) replaced by its templates, so the
    settings carry them as data: workers never need the file, and the output's identity holds them."""
    templates = sfp.get("templates")
    if not isinstance(templates, str) or templates in NAMED_TEMPLATES:
        return sfp
    try:
        return {**sfp, "templates": list(read_templates(vocabulary_path(templates)))}
    except ValueError as exc:
        issues.append(("sfp.templates", str(exc)))
        return None


def _config(spec: JobSpec, depth: int | None, issues: list[tuple[str, str]]) -> SFPConfig | None:
    sfp = _templates_read(spec.sfp, issues)
    if sfp is None:
        return None
    try:
        config = SFPConfig.from_dict(sfp)
    except ValidationError as exc:
        issues += describe_errors(exc, prefix="sfp", root=SFPConfig, also_allowed=("preset",))
        return None
    except ValueError as exc:  # an unknown preset
        issues.append(("sfp.preset", str(exc)))
        return None
    if depth is not None:
        try:
            config.with_block_defaults(depth)
        except ValueError as exc:
            named = re.match(r"(\w+)(?:\[\d+\])?=", str(exc))
            issues.append((f"sfp.{named.group(1)}" if named else "sfp", f"{exc} (model.arch {spec.model.arch})"))
    return config


def resolve(spec: JobSpec, source: str) -> Job:
    """Build the vocabulary and SFP settings; every problem is reported at once."""
    issues: list[tuple[str, str]] = []
    vocabulary = _vocabulary(spec, issues)
    config = _config(spec, _depth(spec.model.arch, issues), issues)
    if issues or vocabulary is None or config is None:
        raise JobError(source, issues)
    return Job(spec=spec, vocabulary=vocabulary, config=config, source=source)


def load_job(path: str | Path, overrides: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> Job:
    """Read, validate and resolve a job file (what `sfp-label validate` and `run` do first)."""
    return resolve(load_spec(path, overrides, environ), str(path))
