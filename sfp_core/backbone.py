"""Build an open_clip CLIP model from an architecture name and a weights source."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from .architectures import OWN_CONFIGS, UnknownArchitecture, arch_patch_size
from .uris import check_uri, is_uri
from .weights import (
    WeightsError,
    cached_or_reachable,
    fetch_uri,
    read_checkpoint,
    regular_file,
    remote_fingerprint,
    resolve_tag,
    tag_config,
    verify_sha256,
)

log = logging.getLogger(__name__)


# A weights string ending like this names a file, even when the file is missing (not an open_clip tag).
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")

# Our architectures are registered with open_clip on first use rather than at import, so importing
# sfp_core changes nothing in open_clip.
_registered = False


@dataclass
class Backbone:
    """A CLIP model in eval mode plus its tokenizer and provenance."""

    model: torch.nn.Module
    tokenizer: Any
    arch: str
    weights: str
    quick_gelu: bool


class _DropRandomInitNotice(logging.Filter):
    """open_clip logs "initialized randomly" for every bare model; we load weights right after."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def model_config(arch: str) -> dict[str, Any]:
    """open_clip's configuration of `arch` (ours included); UnknownArchitecture if there is none."""
    global _registered
    if not _registered:
        open_clip.add_model_config(OWN_CONFIGS)
        _registered = True
    cfg = open_clip.get_model_config(arch)
    if not cfg:
        raise UnknownArchitecture(f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")
    return cfg


def _create(arch: str, quick_gelu: bool) -> torch.nn.Module:
    model_config(arch)
    root = logging.getLogger()
    notice_filter = _DropRandomInitNotice()
    root.addFilter(notice_filter)
    try:
        return open_clip.create_model(arch, pretrained=None, quick_gelu=quick_gelu)
    finally:
        root.removeFilter(notice_filter)


def _arch_quick_gelu(arch: str) -> bool:
    return bool(model_config(arch).get("quick_gelu", False))


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    if getattr(model, "logit_bias", None) is not None and "logit_bias" not in state:
        state["logit_bias"] = torch.zeros_like(model.logit_bias)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        detail = []
        if missing:
            detail.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            detail.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if mismatched:
            k = mismatched[0]
            detail.append(f"shape of {k}: file {tuple(state[k].shape)} vs {arch} {tuple(expected[k].shape)}")
        raise WeightsError(f"weights {source} do not fit architecture {arch}: {'; '.join(detail)}")
    model.load_state_dict(state, strict=True)


def _names_a_file(weights: str) -> bool:
    return Path(weights).expanduser().exists() or "/" in weights or weights.endswith(_FILE_SUFFIXES)


def check_weights(
    arch: str,
    weights: str,
    *,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
) -> None:
    """Raise what `load_backbone` would raise about where the weights are, without loading them.

    An unknown architecture, a missing or odd local file, a URI that is not
    there (one HEAD), an unknown tag, or a tag that is neither cached nor
    downloadable: each is found in seconds, before any worker starts.
    """
    arch_patch_size(arch)
    if weights == "random":
        return
    if is_uri(weights):
        if check_uri(weights, "weights") == "file":
            regular_file(weights[len("file://") :], weights)
        else:
            remote_fingerprint(weights, storage_options)
    elif _names_a_file(weights):
        regular_file(Path(weights).expanduser(), weights)
    else:
        cached_or_reachable(arch, weights, tag_config(arch, weights), Path(cache_dir) if cache_dir else None)


def load_backbone(
    arch: str,
    weights: str,
    *,
    quick_gelu: bool | None = None,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    sha256: str | None = None,
    seed: int = 0,
) -> Backbone:
    """Load `arch` with `weights` (tag | local file | fsspec URI | "random").

    `quick_gelu=None` decides the activation from the weights' origin:
    OpenAI-released weights (tag `openai`, TorchScript archives, fp16 state
    dicts with OpenAI's key layout) were trained with QuickGELU.
    """
    cache = Path(cache_dir) if cache_dir else None
    if weights == "random":
        warnings.warn(
            f"SFP is using RANDOM weights for {arch} (seed {seed}): masks are meaningless; "
            "use this only for tests and smoke runs",
            stacklevel=2,
        )
        use_quick = _arch_quick_gelu(arch) if quick_gelu is None else quick_gelu
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _create(arch, use_quick)
        return Backbone(model.eval(), open_clip.get_tokenizer(arch), arch, weights, use_quick)

    if is_uri(weights):
        path = fetch_uri(weights, storage_options, cache)
        tag_quick = None
    elif _names_a_file(weights):
        path = regular_file(Path(weights).expanduser(), weights)
        tag_quick = None
    else:
        path, tag_quick = resolve_tag(arch, weights, cache)
    verify_sha256(path, sha256, weights)
    checkpoint = read_checkpoint(path)
    if quick_gelu is not None:
        use_quick = quick_gelu
    elif tag_quick is not None:
        use_quick = tag_quick or _arch_quick_gelu(arch)
    else:
        use_quick = checkpoint.openai_origin or _arch_quick_gelu(arch)
    model = _create(arch, use_quick)
    _load_state(model, checkpoint.state_dict, weights, arch)
    log.info("loaded %s weights %s (QuickGELU=%s)", arch, weights, use_quick)
    return Backbone(model.eval(), open_clip.get_tokenizer(arch), arch, weights, use_quick)
