"""sfp_core: SFP (ICCV 2025) training-free open-vocabulary segmentation on a frozen CLIP ViT.

The light parts (errors, settings, vocabulary, results) load at once; the
parts that need torch and open_clip load on first use, so a pipeline worker
that only lists or writes files can import the errors and settings cheaply.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import PRESETS, SFPConfig
from .errors import BusyError, RetryableError, SFPLabelError, UserError
from .results import ImageStats, Outlier, SegmentResult
from .uris import (
    SUPPORTED_PROTOCOLS,
    URI_WITH_PASSWORD,
    UnsupportedURI,
    check_uri,
    credentials_moved_to_options,
    has_user_password,
    is_uri,
    public_uri,
    strip_user_info,
    user_info,
    without_user_info,
)
from .vocabulary import Vocabulary, VocabularyError, mask_dtype_for, spans_lines

if TYPE_CHECKING:
    from .architectures import UnknownArchitecture, arch_depth, arch_patch_size
    from .backbone import check_weights
    from .segmenter import SFPSegmenter
    from .weights import WeightsError, WeightsUnavailable
    from .windows import ImagePreparation, prepare_image

# Names loaded on first use (all but `architectures` need torch): the module each one lives in.
_HEAVY = {
    "UnknownArchitecture": "architectures",
    "arch_depth": "architectures",
    "arch_patch_size": "architectures",
    "check_weights": "backbone",
    "SFPSegmenter": "segmenter",
    "WeightsError": "weights",
    "WeightsUnavailable": "weights",
    "ImagePreparation": "windows",
    "prepare_image": "windows",
}

__all__ = [
    "PRESETS",
    "SUPPORTED_PROTOCOLS",
    "URI_WITH_PASSWORD",
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
    "UnsupportedURI",
    "UserError",
    "Vocabulary",
    "VocabularyError",
    "WeightsError",
    "WeightsUnavailable",
    "arch_depth",
    "arch_patch_size",
    "check_uri",
    "check_weights",
    "credentials_moved_to_options",
    "has_user_password",
    "is_uri",
    "mask_dtype_for",
    "prepare_image",
    "public_uri",
    "spans_lines",
    "strip_user_info",
    "user_info",
    "without_user_info",
]


def __getattr__(name: str) -> Any:
    module = _HEAVY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
