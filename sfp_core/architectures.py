"""What an open_clip architecture is (patch size, depth), read from its JSON config without torch.

Job validation and the driver need only these numbers; importing open_clip to
get them costs seconds and a GiB (it loads torch). open_clip's own configs and
ours are JSON files, read here as data. A name found in neither (`hf-hub:`,
`local-dir:`, or a config a Python user registered with open_clip) is asked of
open_clip itself, which the actors use to build the model anyway.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

from .errors import UserError

# Small architectures for tests and smoke runs (e.g. SFP-Tiny-16: 12 blocks, width 128).
OWN_CONFIGS = Path(__file__).parent / "model_configs"
_REQUIRED_KEYS = ("embed_dim", "vision_cfg", "text_cfg")  # what open_clip requires of a model config


class UnknownArchitecture(UserError, ValueError):
    """The architecture is not an open_clip ViT that SFP can run."""


@functools.cache
def _bundled_configs() -> dict[str, dict[str, Any]]:
    """open_clip's bundled configs, then ours (ours win, as after `open_clip.add_model_config`)."""
    spec = importlib.util.find_spec("open_clip")  # finds the package without importing it
    folders = [Path(p) / "model_configs" for p in (spec.submodule_search_locations or [])] if spec else []
    configs: dict[str, dict[str, Any]] = {}
    for folder in [*folders, OWN_CONFIGS]:
        for file in sorted(folder.glob("*.json")):
            config = json.loads(file.read_text())
            if all(key in config for key in _REQUIRED_KEYS):
                configs[file.stem] = config
    return configs


def model_config(arch: str) -> dict[str, Any]:
    """The configuration of `arch` (ours included); UnknownArchitecture if there is none."""
    config = _bundled_configs().get(arch)
    if config is not None:
        return config
    from .backbone import model_config as open_clip_config  # the names only open_clip can resolve

    return open_clip_config(arch)


def arch_patch_size(arch: str) -> int:
    """Patch size of an open_clip ViT architecture, without building it."""
    patch = model_config(arch).get("vision_cfg", {}).get("patch_size")
    if patch is None:
        raise UnknownArchitecture(f"open_clip architecture {arch!r} is not a ViT (no patch_size)")
    return int(patch)


def arch_depth(arch: str) -> int:
    """Number of transformer blocks in the image tower of an open_clip ViT, without building it."""
    arch_patch_size(arch)  # a ViT at all
    return int(model_config(arch)["vision_cfg"]["layers"])
