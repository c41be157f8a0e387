"""SFPConfig: every knob of SFP (docs/algorithm.md), with the reference profile as defaults."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .templates import NAMED_TEMPLATES, REFERENCE_TEMPLATES, resolve_templates, template_problem

OutlierMethod = Literal["som", "l2", "lof", "none"]
Precision = Literal["fp32", "fp16", "bf16"]
TemplateSet = Literal["reference", "single"]

# Test-time augmentation: the short-side factors a view may have (docs/algorithm.md section 7, item 4).
MIN_SCALE, MAX_SCALE = 0.25, 4.0

# docs/algorithm.md section 8: per-vocabulary reference settings (ViT-B/16).
PRESETS: dict[str, dict[str, Any]] = {
    "voc21": {"short_side": 336, "logit_scale": 50.0, "prob_thd": 0.15, "area_thd": 0.1},
    "context60": {"short_side": 336, "logit_scale": 40.0, "prob_thd": 0.15},
    "coco_object": {"short_side": 336, "logit_scale": 55.0, "prob_thd": 0.35},
    "voc20": {"short_side": 336, "logit_scale": 40.0, "prob_thd": 0.0},
    "context59": {"short_side": 336, "logit_scale": 40.0, "prob_thd": 0.0},
    "coco_stuff": {"short_side": 336, "logit_scale": 40.0, "prob_thd": 0.0},
    "cityscapes": {"short_side": 560, "logit_scale": 40.0, "prob_thd": 0.0},
    "ade20k": {"short_side": 384, "logit_scale": 40.0, "prob_thd": 0.0},
}


class SFPConfig(BaseModel):
    """All SFP settings. `SFPConfig()` is the authors' reference profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # SOF: outlier detection and purification
    outlier_method: OutlierMethod = "som"
    top_k: int = Field(10, ge=1)
    lof_neighbors: int = Field(30, ge=1)
    lof_contamination: float = Field(0.05, gt=0.0, lt=1.0)
    res_cls: float = 0.3
    res_scale: float = 5.0
    detect_block: int | None = Field(None, ge=1, description="None = L-1 (the last block's input)")
    purify_stream: tuple[int, ...] = ()
    # similarity maps and fusion
    tau: float = 0.4
    ref_block: int = Field(9, ge=1)
    aux_block: int = Field(4, ge=1)
    fuse_start: int = Field(4, ge=1)
    fuse_end: int = Field(10, ge=1)
    # head and post-processing
    logit_scale: float = Field(40.0, gt=0.0)
    prob_thd: float = Field(0.0, ge=0.0, le=1.0)
    area_thd: float | None = Field(None, ge=0.0, le=1.0)
    pamr_steps: int = Field(0, ge=0)
    # test-time augmentation: views averaged before post-processing (docs/algorithm.md section 7, item 4)
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    # text side: the prompt templates each query name is encoded in (sfp_core/templates.py)
    templates: TemplateSet | tuple[str, ...] = "reference"
    # whole images
    slide_crop: int = Field(224, ge=0)
    slide_stride: int = Field(112, ge=1)
    short_side: int = Field(336, ge=1)
    long_side: int = Field(2048, ge=1)
    # execution
    precision: Precision = "fp32"
    max_windows_per_forward: int = Field(64, ge=1)

    @field_validator("templates", mode="before")
    @classmethod
    def _check_templates(cls, value: Any) -> Any:
        """A named set or a list of templates, each with one `{}`; a clear message instead of a union's two."""
        if isinstance(value, str):
            if value not in NAMED_TEMPLATES:
                raise ValueError(
                    f"templates is one of {', '.join(NAMED_TEMPLATES)} or a list of templates "
                    "(a job file may name a file of them)"
                )
            return value
        if not isinstance(value, list | tuple) or not value or not all(isinstance(t, str) for t in value):
            raise ValueError("templates is a non-empty list of strings, each with one {} for the name")
        for index, template in enumerate(value):
            problem = template_problem(template)
            if problem:
                raise ValueError(f"template {index}: {problem}")
        return tuple(value)

    @field_validator("scales", mode="before")
    @classmethod
    def _check_scales(cls, value: Any) -> Any:
        """Short-side factors of the working size, sorted so that one set of views has one hash; 1.0 must be
        there, the identity view whose outliers are the image's statistics."""
        numbers = isinstance(value, list | tuple) and all(
            isinstance(s, int | float) and not isinstance(s, bool) for s in value
        )
        if not numbers or not value:
            raise ValueError(
                "scales is a non-empty list of short-side factors of the working size, e.g. [0.75, 1.0, 1.25]"
            )
        scales = sorted(float(s) for s in value)
        outside = [s for s in scales if not MIN_SCALE <= s <= MAX_SCALE]
        if outside:
            raise ValueError(f"scales must lie in {MIN_SCALE}..{MAX_SCALE}, got {outside[0]}")
        if len(set(scales)) != len(scales):
            raise ValueError(f"scales must not repeat a factor, got {list(value)}")
        if 1.0 not in scales:
            raise ValueError(
                f"scales must include 1.0 (the identity view, which gives the outlier statistics), got {list(value)}"
            )
        return tuple(scales)

    @model_validator(mode="after")
    def _check_ranges(self) -> SFPConfig:
        if self.fuse_start > self.fuse_end:
            raise ValueError(f"fuse_start ({self.fuse_start}) must not exceed fuse_end ({self.fuse_end})")
        if self.slide_crop and self.slide_stride > self.slide_crop:
            raise ValueError(
                f"slide_stride ({self.slide_stride}) larger than slide_crop ({self.slide_crop}) leaves gaps"
            )
        if any(b < 1 for b in self.purify_stream):
            raise ValueError(f"purify_stream blocks must be >= 1, got {list(self.purify_stream)}")
        if self.short_side > self.long_side:
            raise ValueError(f"short_side ({self.short_side}) must not exceed long_side ({self.long_side})")
        return self

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SFPConfig:
        """The reference settings of a benchmark vocabulary (docs/algorithm.md section 8)."""
        if not isinstance(name, str):
            raise ValueError(f"an SFP preset is a name such as voc21, got {name!r}")
        key = name.lower().replace("-", "_")
        if key not in PRESETS:
            raise ValueError(f"unknown SFP preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        return cls(**{**PRESETS[key], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (job files and manifests embed it)."""
        data = self.model_dump()
        data["purify_stream"] = list(self.purify_stream)
        data["scales"] = list(self.scales)
        if not isinstance(self.templates, str):
            data["templates"] = list(self.templates)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SFPConfig:
        """Inverse of `to_dict`; a `preset` key selects the base profile."""
        data = dict(data)
        preset = data.pop("preset", None)
        return cls.preset(preset, **data) if preset else cls(**data)

    def config_hash(self) -> str:
        """Short stable hash of the settings that change the output."""
        settings = self.to_dict()
        settings.pop("max_windows_per_forward")  # batching never changes a result
        # The reference templates are left out, so outputs labelled before templates were a setting keep
        # their hash; any others count by their text, however they were named.
        templates = self.prompt_templates()
        if templates == REFERENCE_TEMPLATES:
            settings.pop("templates")
        else:
            settings["templates"] = list(templates)
        # Test-time augmentation off (one unflipped view at scale 1) is left out for the same reason.
        if not self.flip:
            settings.pop("flip")
        if self.scales == (1.0,):
            settings.pop("scales")
        blob = json.dumps(settings, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def views(self) -> tuple[tuple[float, bool], ...]:
        """`(scale, flipped)` of every view test-time augmentation averages, the identity `(1.0, False)`
        among them; a scale's unflipped and flipped views are next to each other."""
        return tuple(
            (scale, flipped) for scale in self.scales for flipped in ((False, True) if self.flip else (False,))
        )

    def prompt_templates(self) -> tuple[str, ...]:
        """The template strings `templates` names, `{}` standing for the query name."""
        return resolve_templates(self.templates)

    def with_block_defaults(self, depth: int) -> SFPConfig:
        """Resolve `detect_block` for a ViT of `depth` blocks and check every index fits."""
        resolved = self if self.detect_block is not None else self.model_copy(update={"detect_block": depth - 1})
        last_usable = depth - 1
        named = {
            "detect_block": resolved.detect_block,
            "ref_block": resolved.ref_block,
            "aux_block": resolved.aux_block,
            "fuse_start": resolved.fuse_start,
            "fuse_end": resolved.fuse_end,
        }
        named.update({f"purify_stream[{i}]": b for i, b in enumerate(resolved.purify_stream)})
        for field, block in named.items():
            if block > last_usable:
                raise ValueError(
                    f"{field}={block} is out of range for a ViT with {depth} blocks (allowed 1..{last_usable})"
                )
        return resolved
