"""Typed settings of each stage, derived from a `LabelRequest` in one place.

The decode stage and the predictor get the very same `ImagePreparation`; the
predictor also checks it against its segmenter's own, and the segmenter
checks every prepared image against it (`SFPSegmenter.segment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .request import LabelRequest, ModelChoice
from .storage import public_uri

if TYPE_CHECKING:  # torch-heavy; the encode stage imports this module and needs none of it
    from sfp_core import ImagePreparation, SFPConfig, Vocabulary


@dataclass(frozen=True)
class DecodeSettings:
    preparation: ImagePreparation
    max_pixels: int
    kept: tuple[str, ...] = ()  # the input's fields, carried through every stage to the rows


@dataclass(frozen=True)
class PredictorSettings:
    model: ModelChoice
    vocabulary: Vocabulary
    config: SFPConfig
    preparation: ImagePreparation
    device: str
    threads: int  # torch threads of a CPU actor: its share of the cluster's CPUs
    confidence: bool
    kept: tuple[str, ...] = ()


@dataclass(frozen=True)
class EncodeSettings:
    model: str  # "<arch>:<public weights URI>", the rows' provenance
    config_hash: str
    run_id: str
    kept: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageSettings:
    decode: DecodeSettings
    predictor: PredictorSettings
    encode: EncodeSettings

    @classmethod
    def derive(cls, request: LabelRequest, run_id: str, cluster_cpus: float) -> StageSettings:
        from sfp_core import ImagePreparation, arch_patch_size

        model, config = request.model, request.config
        preparation = ImagePreparation(config.short_side, config.long_side, arch_patch_size(model.arch))
        max_actors = request.resources.actors[1]
        kept = tuple(request.input.fields)
        return cls(
            decode=DecodeSettings(preparation, request.resources.max_pixels, kept),
            predictor=PredictorSettings(
                model=model,
                vocabulary=request.vocabulary,
                config=config,
                preparation=preparation,
                device=request.resources.device,
                threads=max(1, int(cluster_cpus) // max_actors),
                confidence=request.output.confidence,
                kept=kept,
            ),
            encode=EncodeSettings(provenance(model), config.config_hash(), run_id, kept),
        )


def provenance(model: ModelChoice) -> str:
    """The `model` column: architecture and weights, without credentials."""
    return f"{model.arch}:{public_uri(model.weights)}"
