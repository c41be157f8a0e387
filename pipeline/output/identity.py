"""What fixes the meaning of an output's masks: model, vocabulary and SFP settings.

It is recorded in the pointer (`versions.Pointer`), in every data file's
Parquet key-value metadata (so a reader holding one file can name the
classes) and in the dataset card. An incremental run whose identity differs
from its output's is refused: one output never mixes two vocabularies.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from sfp_core.templates import templates_fingerprint

from .rows import output_schema

METADATA_KEY = b"sfp_label"  # the Parquet key-value metadata entry holding an identity as JSON


class LabelIdentity(BaseModel):
    """The model, vocabulary (class names with their synonyms, index = mask value) and settings."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    arch: str
    weights: str  # a public URI: never user info or query strings
    classes: list[list[str]] = Field(default_factory=list)
    vocabulary_fingerprint: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    config_hash: str = ""
    columns: list[str] = Field(default_factory=list)  # extra text columns kept from the input (`input.fields`)

    @property
    def class_names(self) -> list[str]:
        """Display names (the first name of each class); index = mask value."""
        return [names[0] for names in self.classes]

    @property
    def templates(self) -> str | list[str]:
        """The settings' prompt templates: a set's name or the templates themselves (outputs labelled
        before templates were a setting used the reference ones)."""
        return self.config.get("templates", "reference")

    def templates_shown(self) -> str:
        """The templates in a message: their name or count, and their fingerprint."""
        named = self.templates if isinstance(self.templates, str) else f"a list of {len(self.templates)}"
        return f"prompt templates {named} ({templates_fingerprint(self.templates)})"

    def conflict_with(self, other: LabelIdentity) -> str | None:
        """What differs in a way that changes the masks (the weights' location may move), or None."""
        if self.classes != other.classes:
            return f"vocabulary {other.vocabulary_fingerprint} ({_shown(other.class_names)})"
        if templates_fingerprint(self.templates) != templates_fingerprint(other.templates):
            return other.templates_shown()
        if self.config_hash != other.config_hash:
            return f"SFP settings {other.config_hash}"
        if self.arch != other.arch:
            return f"architecture {other.arch}"
        if self.columns != other.columns:  # one output, one schema: every file must open with the others
            return f"extra columns [{', '.join(other.columns)}] (the output has [{', '.join(self.columns)}])"
        return None

    def describe(self) -> str:
        templates = "" if self.templates == "reference" else f", {self.templates_shown()}"
        return (
            f"vocabulary {self.vocabulary_fingerprint} ({_shown(self.class_names)}), settings {self.config_hash}"
            + templates
        )

    def schema_metadata(self) -> dict[bytes, bytes]:
        return {METADATA_KEY: self.model_dump_json().encode()}

    def schema(self) -> pa.Schema:
        """The schema of the data files these labels are written in, with this identity as metadata."""
        return output_schema(self.columns).with_metadata(self.schema_metadata())

    @classmethod
    def from_schema(cls, schema: pa.Schema) -> LabelIdentity | None:
        """The identity a data file's schema carries; None for files without one."""
        raw = (schema.metadata or {}).get(METADATA_KEY)
        return cls.model_validate(json.loads(raw)) if raw else None


def _shown(names: list[str], limit: int = 4) -> str:
    more = f", ... {len(names)} classes" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
