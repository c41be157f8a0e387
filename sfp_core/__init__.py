"""sfp_core: SFP (ICCV 2025) training-free open-vocabulary segmentation on a frozen CLIP ViT."""

from .config import PRESETS, SFPConfig
from .results import ImageStats, Outlier, SegmentResult
from .segmenter import SFPSegmenter
from .vocabulary import Vocabulary
from .weights import WeightsError

__all__ = [
    "PRESETS",
    "ImageStats",
    "Outlier",
    "SFPConfig",
    "SFPSegmenter",
    "SegmentResult",
    "Vocabulary",
    "WeightsError",
]
