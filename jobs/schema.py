"""The job file schema: every key a job may hold, its default, and what is allowed.

Unknown keys are errors (a typo must not silently fall back to a default).
`sfp:` is kept as a plain mapping here and checked against `SFPConfig` by
`jobs.resolve`, so its errors can name `sfp.<field>` too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Section):
    uri: str = Field(min_length=1, description="local folder, file://, s3://bucket/prefix, gs://...")
    extensions: list[str] = Field(default=["jpg", "jpeg", "png"], min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options; never secrets")

    @field_validator("extensions")
    @classmethod
    def _normalise_extensions(cls, value: list[str]) -> list[str]:
        cleaned = [ext.strip().lstrip(".").lower() for ext in value]
        if any(not ext for ext in cleaned):
            raise ValueError("extensions must be non-empty names such as jpg or png")
        return cleaned


class OutputSpec(_Section):
    uri: str = Field(min_length=1, description="local folder, file://, s3://bucket/prefix, gs://...")
    mode: Literal["incremental", "overwrite"] = "incremental"
    confidence: bool = False
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options; never secrets")
    shared_filesystem: bool = Field(
        False, description="a local output path is a filesystem mounted at the same path on every node"
    )


class ModelSpec(_Section):
    arch: str = Field("ViT-B-16", min_length=1)
    weights: str = Field("openai", min_length=1, description="open_clip tag | file | fsspec URI | random")
    weights_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="for a weights URI; as in input")


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


class ResourcesSpec(_Section):
    actors: tuple[int, int] = Field((1, 1), description="actor-pool size: [min, max], or one number")
    gpus_per_actor: float = Field(0.0, ge=0.0)
    batch_size: int = Field(8, ge=1)
    max_pixels: int = Field(178_956_970, ge=1, description="images with more pixels get an error row")

    @field_validator("actors", mode="before")
    @classmethod
    def _fixed_pool(cls, value: Any) -> Any:
        return (value, value) if isinstance(value, int) else value

    @field_validator("actors")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if low < 1 or high < low:
            raise ValueError(f"actors must be [min, max] with 1 <= min <= max, got [{low}, {high}]")
        return value


class JobSpec(_Section):
    """A whole labelling run, as written in a job file."""

    name: str = Field(pattern=NAME_PATTERN, description="defaults to the job file's name")
    input: InputSpec
    output: OutputSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    vocabulary: VocabularySpec
    sfp: dict[str, Any] = Field(default_factory=dict, description="any SFPConfig field, or preset: <name>")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)


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
