"""`LabelRequest`: one frozen, validated description of a labelling run.

Built once (by the job layer from a job file, or directly by Python users).
The value rules of every section live here and nowhere else: the job file's
schema (`jobs.jobfile.spec`) is these same models with job-only keys added,
so a job file and a Python caller are refused by the same rule, with the
same dotted field name. The stages get their own typed settings, derived
from the request in one place (`settings.py`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sfp_core import SFPConfig, Vocabulary, check_uri, is_uri

from .output import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_ROWS_PER_FILE,
    SCHEMA,
    STAGE_COLUMNS,
    LabelIdentity,
)
from .storage import Redactor, public_uri

# What Pillow decodes and people store; matched case-insensitively (`IMG_0001.JPG`).
DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")
# The image members WebDataset shards use, in the order a sample's image is chosen.
DEFAULT_SHARD_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
DEFAULT_IMAGE_COLUMN = "image"  # Hugging Face's name for an Image feature
DEFAULT_ID_COLUMN = "id"  # used when the table has it and `id_column` is not set

InputFormat = Literal["files", "webdataset", "parquet", "list"]
_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RequestSection(BaseModel):
    """A section of a request: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(RequestSection):
    """Where the images are and how they are stored (docs/design.md, "Inputs").

    `files`: every image file under a folder or prefix (or one file). `webdataset`: tar shards (a prefix, a
    glob or brace notation); `extensions` then chooses each sample's image member. `parquet`: tables with an
    image column (bytes or Hugging Face's `{bytes, path}`). `list`: a text, CSV or Parquet file of URIs.
    """

    uri: str = Field(min_length=1, description="local folder, file://, s3://bucket/prefix, gs://...")
    format: InputFormat = Field("files", description="files | webdataset | parquet | list")
    extensions: list[str] = Field(
        default=list(DEFAULT_EXTENSIONS), min_length=1, description="image files (files) or members (webdataset)"
    )
    image_column: str = Field(DEFAULT_IMAGE_COLUMN, min_length=1, description="parquet: the column of image bytes")
    id_column: str | None = Field(
        None, min_length=1, description=f"parquet, list: the id column (default {DEFAULT_ID_COLUMN!r} if present)"
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="extra output columns: name -> member (txt, json.url) or source column; stored as text",
    )
    allow_empty: bool = Field(False, description="an input without images is fine (an inbox); else refused")
    max_image_bytes: int = Field(
        DEFAULT_MAX_IMAGE_BYTES, ge=1, description="an encoded image over this many bytes gets an error row, unread"
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, repr=False, description="fsspec options; never secrets"
    )

    @field_validator("uri")
    @classmethod
    def _supported_uri(cls, value: str) -> str:
        check_uri(value, "input")
        return value

    @model_validator(mode="before")
    @classmethod
    def _format_defaults(cls, data: Any) -> Any:
        """A webdataset input without `extensions` chooses among WebDataset's image members."""
        if isinstance(data, dict) and data.get("format") == "webdataset" and "extensions" not in data:
            return {**data, "extensions": list(DEFAULT_SHARD_EXTENSIONS)}
        return data

    @field_validator("extensions")
    @classmethod
    def _normalise_extensions(cls, value: list[str]) -> list[str]:
        """("JPG", ".png") -> ["jpg", "png"], in the order given, each once."""
        cleaned = [ext.strip().lstrip(".").lower() for ext in value]
        if any(not ext for ext in cleaned):
            raise ValueError("extensions must be non-empty names such as jpg or png")
        return list(dict.fromkeys(cleaned))

    @field_validator("fields")
    @classmethod
    def _column_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, origin in value.items():
            if not _COLUMN_NAME.match(name):
                raise ValueError(f"{name!r} is not a column name (letters, digits and _, not first a digit)")
            if name in SCHEMA.names:
                raise ValueError(f"{name!r} is already a column of the output; choose another name")
            if name in STAGE_COLUMNS:
                raise ValueError(f"{name!r} is a column the pipeline uses while labelling; choose another name")
            if not origin.strip():
                raise ValueError(f"{name!r} names no source")
        return value

    @model_validator(mode="after")
    def _options_fit_format(self) -> Source:
        if self.fields and self.format == "files":
            raise ValueError("fields: loose files have no fields to keep; use a webdataset, parquet or list input")
        if self.format != "parquet" and self.image_column != DEFAULT_IMAGE_COLUMN:
            raise ValueError(f"image_column is for parquet inputs, not {self.format}")
        if self.id_column is not None and self.format not in ("parquet", "list"):
            raise ValueError(f"id_column is for parquet and list inputs, not {self.format}")
        return self


class Destination(RequestSection):
    """Where the rows go and how: skip what is there (`incremental`) or replace it (`overwrite`)."""

    uri: str = Field(min_length=1, description="local folder, file://, s3://bucket/prefix, gs://...")
    mode: Literal["incremental", "overwrite"] = "incremental"
    confidence: bool = Field(False, description="also store the per-pixel confidence PNG")
    rows_per_file: int = Field(DEFAULT_ROWS_PER_FILE, ge=1, description="rows in one committed data file (at most)")
    commit_every_s: float = Field(
        60.0, gt=0, allow_inf_nan=False, description="commit a file this long after its first row, even if short"
    )
    storage_retry_s: float = Field(120.0, ge=0, allow_inf_nan=False, description="ride out storage outages")
    allow_foreign_files: bool = Field(
        False, description="run even though the output folder holds files sfp-label did not write (never touched)"
    )
    retry_errors: Literal["transient", "all", "none"] = Field(
        "transient", description="error rows an incremental run labels again: unreadable files, all, or none"
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, repr=False, description="fsspec options; never secrets"
    )

    @field_validator("uri")
    @classmethod
    def _supported_uri(cls, value: str) -> str:
        check_uri(value, "output")
        return value

    @property
    def incremental(self) -> bool:
        return self.mode == "incremental"


class ModelChoice(RequestSection):
    """Which CLIP: an open_clip architecture and weights (tag | file | fsspec URI | "random")."""

    arch: str = Field("ViT-B-16", min_length=1)
    weights: str = Field("openai", min_length=1, description="open_clip tag | file | fsspec URI | random")
    weights_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, repr=False, description="for a weights URI; as in input"
    )

    @field_validator("weights")
    @classmethod
    def _supported_uri(cls, value: str) -> str:
        if is_uri(value):
            check_uri(value, "weights")
        return value


class Resources(RequestSection):
    """How much of the cluster the run uses."""

    actors: tuple[int, int] = Field((1, 1), description="actor-pool size: [min, max], or one number")
    gpus_per_actor: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="0 = CPU actors")
    batch_size: int = Field(8, ge=1)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="images with more pixels get an error row")

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

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_actor > 0 else "cpu"


class LabelRequest(BaseModel):
    """Everything one `label` run needs; see docs/design.md ("The run request")."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    input: Source
    output: Destination
    vocabulary: Vocabulary
    model: ModelChoice = Field(default_factory=ModelChoice)
    config: SFPConfig = Field(default_factory=SFPConfig)
    resources: Resources = Field(default_factory=Resources)
    run_name: str | None = None

    @property
    def incremental(self) -> bool:
        return self.output.incremental

    def redactor(self) -> Redactor:
        """What hides this request's credentials (every storage option, URI user info) in text."""
        sections = (self.input, self.output, self.model)
        uris = (self.input.uri, self.output.uri, self.model.weights)
        return Redactor.for_options(*(dict(section.storage_options) for section in sections), uris=uris)

    def identity(self) -> LabelIdentity:
        """What makes this run's masks what they are (recorded with the output; see `output.identity`)."""
        return LabelIdentity(
            arch=self.model.arch,
            weights=public_uri(self.model.weights),
            classes=[list(names) for names in self.vocabulary.classes],
            vocabulary_fingerprint=self.vocabulary.fingerprint(),
            config=self.config.to_dict(),
            config_hash=self.config.config_hash(),
            columns=list(self.input.fields),
        )
