"""The job file schema: every key a job may hold, its default, and what is allowed.

The run's sections are the pipeline's own request models (`pipeline.Source`,
`Destination`, `ModelChoice`, `Resources`): their rules are written once,
there. Unknown keys are errors (a typo must not silently fall back to a
default). `sfp:` is kept as a plain mapping here and checked against
`SFPConfig` by `resolve`, so its errors can name `sfp.<field>` too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline import Destination, ModelChoice, Resources, Source

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputSpec(Destination):
    """`output:`: the request's Destination, plus where a local path is mounted."""

    shared_filesystem: bool = Field(
        False, description="a local output path is a filesystem mounted at the same path on every node"
    )

    def as_destination(self) -> Destination:
        """The request's part of this section (`shared_filesystem` only concerns placement)."""
        return Destination(**self.model_dump(exclude={"shared_filesystem"}))


class VocabularySpec(_Section):
    file: str | None = Field(None, min_length=1, description="one class per line, synonyms comma-separated")
    classes: list[list[str]] | None = Field(None, min_length=1)

    @field_validator("classes", mode="before")
    @classmethod
    def _single_names(cls, value: Any) -> Any:
        """`[cat, dog]` is shorthand for `[[cat], [dog]]`."""
        if isinstance(value, list):
            return [[entry] if isinstance(entry, str) else entry for entry in value]
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> VocabularySpec:
        if (self.file is None) == (self.classes is None):
            raise ValueError("give exactly one of vocabulary.file or vocabulary.classes")
        return self


class JobSpec(_Section):
    """A whole labelling run, as written in a job file."""

    name: str = Field(pattern=NAME_PATTERN, description="defaults to the job file's name")
    input: Source
    output: OutputSpec
    model: ModelChoice = Field(default_factory=ModelChoice)
    vocabulary: VocabularySpec
    sfp: dict[str, Any] = Field(default_factory=dict, description="any SFPConfig field, or preset: <name>")
    resources: Resources = Field(default_factory=Resources)


def _allowed_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed where an unknown key was found (walks the schema along the error's path)."""
    model = root
    for part in loc[:-1]:
        annotation = model.model_fields[str(part)].annotation if str(part) in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def describe_errors(
    exc: ValidationError, *, prefix: str = "", root: type[BaseModel] = JobSpec, also_allowed: tuple[str, ...] = ()
) -> list[tuple[str, str]]:
    """Pydantic errors as (dotted field, readable problem) pairs; `root` is the model that was validated."""
    issues = []
    for error in exc.errors(include_url=False):
        field = ".".join([*([prefix] if prefix else []), *(str(part) for part in error["loc"])])
        if error["type"] == "extra_forbidden":
            allowed = [*_allowed_keys(root, error["loc"]), *(also_allowed if len(error["loc"]) == 1 else ())]
            problem = "unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
        elif error["type"] == "missing":
            problem = "required"
        else:
            problem = error["msg"].removeprefix("Value error, ")
            given = error.get("input")
            if isinstance(given, str | int | float | bool) and len(repr(given)) <= 80:
                problem += f" (got {given!r})"
        issues.append((field or "(top level)", problem))
    return issues
