"""sfp_core: SFP (ICCV 2025) training-free open-vocabulary segmentation on a frozen CLIP ViT."""

from .backbone import arch_patch_size
from .config import PRESETS, SFPConfig
from .results import ImageStats, Outlier, SegmentResult
from .segmenter import SFPSegmenter
from .vocabulary import Vocabulary
from .weights import WeightsError
from .windows import prepare_image

__all__ = [
    "PRESETS",
    "ImageStats",
    "Outlier",
    "SFPConfig",
    "SFPSegmenter",
    "SegmentResult",
    "Vocabulary",
    "WeightsError",
    "arch_patch_size",
    "prepare_image",
]
