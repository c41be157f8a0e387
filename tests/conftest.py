"""Shared fixtures: the golden tiny CLIP and a segmenter built on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "data" / "golden"
TINY_ARCH = "SFP-Tiny-16"  # registered by sfp_core: 12 blocks, width 128, patch 16, QuickGELU


@pytest.fixture(scope="session")
def golden_index() -> dict:
    return json.loads((GOLDEN / "index.json").read_text())


@pytest.fixture(scope="session")
def tiny_backbone():
    from sfp_core.backbone import load_backbone

    return load_backbone(TINY_ARCH, str(GOLDEN / "tiny_openai_clip.pt"))


@pytest.fixture(scope="session")
def golden_vocab():
    from sfp_core import Vocabulary

    return Vocabulary.from_file(GOLDEN / "vocab.txt")


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_backbone, golden_vocab):
    from sfp_core import SFPConfig, SFPSegmenter

    return SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(logit_scale=40))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
