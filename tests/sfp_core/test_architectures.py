"""An architecture read from its JSON config without torch (`sfp_core.architectures`) is the one open_clip
builds: every registered name gives the same config, patch size and depth."""

from __future__ import annotations

import open_clip
import pytest

from sfp_core import UnknownArchitecture, backbone
from sfp_core import architectures as light


def test_every_open_clip_architecture_reads_the_same_without_open_clip():
    backbone.model_config("SFP-Tiny-16")  # registers ours with open_clip
    names = open_clip.list_models()
    assert "SFP-Tiny-16" in names and "ViT-B-16" in names
    for name in names:
        assert light.model_config(name) == open_clip.get_model_config(name), name


@pytest.mark.parametrize(
    ("arch", "patch", "depth"), [("ViT-B-16", 16, 12), ("ViT-L-14", 14, 24), ("SFP-Tiny-16", 16, 12)]
)
def test_patch_size_and_depth(arch, patch, depth):
    assert (light.arch_patch_size(arch), light.arch_depth(arch)) == (patch, depth)


@pytest.mark.parametrize(("arch", "words"), [("ViT-Nope-99", "unknown open_clip architecture"), ("RN50", "not a ViT")])
def test_what_is_not_an_sfp_architecture(arch, words):
    with pytest.raises(UnknownArchitecture, match=words):
        light.arch_depth(arch)
