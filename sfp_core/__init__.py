"""sfp_core: SFP (ICCV 2025) training-free open-vocabulary segmentation on a frozen CLIP ViT."""

from .backbone import UnknownArchitecture, arch_depth, arch_patch_size
from .config import PRESETS, SFPConfig
from .errors import BusyError, RetryableError, SFPLabelError, UserError
from .results import ImageStats, Outlier, SegmentResult
from .segmenter import SFPSegmenter
from .vocabulary import Vocabulary, VocabularyError, mask_dtype_for
from .weights import WeightsError, WeightsUnavailable
from .windows import ImagePreparation, prepare_image

__all__ = [
    "PRESETS",
    "BusyError",
    "ImagePreparation",
    "ImageStats",
    "Outlier",
    "RetryableError",
    "SFPConfig",
    "SFPLabelError",
    "SFPSegmenter",
    "SegmentResult",
    "UnknownArchitecture",
    "UserError",
    "Vocabulary",
    "VocabularyError",
    "WeightsError",
    "WeightsUnavailable",
    "arch_depth",
    "arch_patch_size",
    "mask_dtype_for",
    "prepare_image",
]
