"""Where CLIP weights come from: a tag, a local file, an fsspec URI, or `random`.

Every checkpoint is read without executing code: safetensors, `torch.load`
with `weights_only=True`, or (OpenAI's original release format) the tensors
of a TorchScript archive, unpickled as data (`torchscript.py`), never with
`torch.jit.load`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import RetryableError, UserError
from .torchscript import ArchiveError, is_torchscript_archive, read_archive_tensors
from .uris import check_uri, credentials_moved_to_options, public_uri, user_info, without_user_info

log = logging.getLogger(__name__)

_OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
# Tensors that TorchScript archives store but open_clip rebuilds itself (the text causal mask).
_DERIVED_BUFFERS = ("attn_mask",)
# How a checkpoint file starts: a zip (torch.save since 1.6, TorchScript), or a pickle (legacy torch.save).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
_HUB_HOST = ("huggingface.co", 443)
# The most a TorchScript archive's tensors may take in memory (their storages, and again the copies made of
# them). OpenAI's largest ViT archive (ViT-L/14@336px, fp16) holds 0.9 GB and an fp32 ViT-L/14 1.7 GB;
# larger models come as safetensors. Archives store tensors uncompressed, so storages that inflate to more
# than ARCHIVE_INFLATION times the file's own size are a zip bomb. See docs/design.md ("Weights are data").
MAX_ARCHIVE_BYTES = 2 << 30
ARCHIVE_INFLATION = 10


class WeightsError(UserError):
    """The requested weights cannot be found, verified or read safely."""


class WeightsUnavailable(WeightsError, RetryableError):
    """The weights' storage or the model hub failed to answer; a later try may succeed."""


@dataclass(frozen=True)
class Checkpoint:
    """A state dict plus what we learnt about where it came from."""

    state_dict: dict[str, torch.Tensor]
    openai_origin: bool


def default_cache_dir() -> Path:
    root = os.environ.get("SFP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sfp")
    return Path(root)


def regular_file(path: str | Path, label: str | None = None) -> Path:
    """`path` if it is a regular file; a clear WeightsError for a directory, device, FIFO or nothing."""
    path = Path(path)
    label = label or str(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise WeightsError(f"weights file {label} does not exist") from None
    except OSError as exc:
        raise WeightsError(f"weights file {label} cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise WeightsError(f"weights {label} is a directory, not a checkpoint file")
    if not stat.S_ISREG(mode):
        raise WeightsError(f"weights {label} is not a regular file (a device, FIFO or socket)")
    return path


def sha256_of(path: str | Path) -> str:
    path = regular_file(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str | None, label: str) -> None:
    if expected is None:
        return
    actual = sha256_of(path)
    if actual.lower() != expected.lower():
        raise WeightsError(f"weights {label} failed the sha256 check: expected {expected}, got {actual}")


def fetch_uri(uri: str, storage_options: dict[str, Any] | None, cache_dir: Path | None) -> Path:
    """Copy a remote checkpoint into the local cache once and return the local path.

    The cache key includes the object's fingerprint (`fs.ukey`, e.g. the S3
    ETag), so a replaced object is fetched again. Writes go to a temp file and
    are renamed into place, so concurrent workers never read half a file.
    """
    if check_uri(uri, "weights") == "file":
        return regular_file(uri[len("file://") :], uri)
    fs, path, fingerprint = remote_fingerprint(uri, storage_options)
    key = hashlib.sha256(f"{uri}\n{fingerprint}".encode()).hexdigest()[:24]
    target_dir = (cache_dir or default_cache_dir()) / "weights" / key
    target = target_dir / os.path.basename(path.rstrip("/"))
    if target.exists():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    log.info("fetching weights %s into %s", public_uri(uri), target)
    fd, tmp = tempfile.mkstemp(dir=target_dir, prefix="_partial-")
    try:
        with os.fdopen(fd, "wb") as out, fs.open(path, "rb") as src:
            for chunk in iter(lambda: src.read(8 << 20), b""):
                out.write(chunk)
        os.replace(tmp, target)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        raise WeightsUnavailable(
            f"cannot download weights {public_uri(uri)}: {type(exc).__name__}: {without_user_info(str(exc))}"
        ) from exc
    return target


def remote_fingerprint(uri: str, storage_options: dict[str, Any] | None) -> tuple[Any, str, str]:
    """(fsspec filesystem, path, fingerprint) of a remote checkpoint: one HEAD, nothing downloaded.

    User info in the URI (`s3://KEY:SECRET@bucket/...`, the secret may hold `/`) is taken out of it and
    passed as the storage's `key` / `secret`; no message says it.
    """
    import fsspec

    check_uri(uri, "weights")
    user, password = user_info(uri)
    located, options = credentials_moved_to_options(uri, storage_options)
    shown = public_uri(uri)

    def said(exc: Exception) -> str:
        text = without_user_info(str(exc))
        for secret in (user, password):
            text = text.replace(secret, "***") if secret else text
        return text

    try:
        fs, path = fsspec.core.url_to_fs(located, **options)
        return fs, path, fs.ukey(path)
    except FileNotFoundError as exc:
        raise WeightsError(f"weights {shown} not found") from exc
    except PermissionError as exc:
        raise WeightsError(
            f"weights {shown}: access denied ({said(exc)}); check the credentials in the environment"
        ) from exc
    except Exception as exc:
        raise WeightsUnavailable(f"cannot reach weights {shown}: {type(exc).__name__}: {said(exc)}") from exc


def _is_safetensors(head: bytes) -> bool:
    """safetensors: a little-endian u64 header length, then a JSON object."""
    return len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"checkpoint {source} holds no state dict (got {type(obj).__name__})")
    if not obj:
        raise WeightsError(f"checkpoint {source} holds no named tensors")
    tensors = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        tensors[key[len("module.") :] if key.startswith("module.") else key] = value
    return tensors


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a CLIP checkpoint file without running any code from it."""
    path = regular_file(path)
    source = str(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    from_archive = False
    if _is_safetensors(head):
        from safetensors.torch import load_file

        raw: Any = load_file(str(path), device="cpu")
    elif head.startswith(_ZIP_MAGIC) and _holds_torchscript(path):
        # OpenAI's released .pt files are TorchScript archives; only their tensors are read, as data.
        raw = _archive_tensors(path)
        from_archive = True
    elif head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raw = _torch_load(path)
    else:
        raise WeightsError(
            f"weights {source} is not a checkpoint (neither safetensors, a torch.save file nor a TorchScript archive)"
        )
    has_metadata = isinstance(raw, dict) and any(k in raw for k in _OPENAI_METADATA_KEYS)
    state = _unwrap(raw, source)
    for key in _OPENAI_METADATA_KEYS:
        state.pop(key, None)
    for key in [k for k in state if k.rsplit(".", 1)[-1] in _DERIVED_BUFFERS]:
        del state[key]
    conv = state.get("visual.conv1.weight")
    openai_origin = (
        from_archive
        or has_metadata
        or (conv is not None and conv.dtype == torch.float16 and not (isinstance(raw, dict) and "state_dict" in raw))
    )
    return Checkpoint(state_dict=state, openai_origin=openai_origin)


def _holds_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return is_torchscript_archive(archive)
    except Exception as exc:  # BadZipFile, or a zip directory that makes zipfile fail some other way
        raise WeightsError(f"weights {path} is not a checkpoint (a damaged zip: {type(exc).__name__}: {exc})") from exc


def _archive_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The archive's tensors within MAX_ARCHIVE_BYTES; every failure is a WeightsError naming the file."""
    try:
        max_bytes = min(MAX_ARCHIVE_BYTES, ARCHIVE_INFLATION * path.stat().st_size)
        with zipfile.ZipFile(path) as archive:
            return read_archive_tensors(archive, max_bytes)
    except ArchiveError as exc:
        raise WeightsError(f"refusing to load weights {path} (TorchScript archive): {exc}") from exc
    except Exception as exc:  # opening the zip again failed (it was read once already), or no memory was left
        raise WeightsError(f"cannot read weights {path} (TorchScript archive): {type(exc).__name__}: {exc}") from exc


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise WeightsError(
                f"refusing to load weights {path}: it is a pickle that needs code to unpickle "
                "(unsafe). Save a plain state dict (torch.save(model.state_dict())) or safetensors."
            ) from exc
        raise WeightsError(f"cannot read weights {path}: {type(exc).__name__}: {exc}") from exc


def hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(_HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def tag_config(arch: str, tag: str) -> dict[str, Any]:
    """open_clip's record of a pretrained tag of `arch`; WeightsError naming the known tags if there is none."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(arch)
        raise WeightsError(
            f"weights {tag!r} are neither a file, a URI, 'random' nor an open_clip tag of {arch} "
            f"(its tags: {', '.join(known) or 'none'})"
        )
    return cfg


def cached_or_reachable(arch: str, tag: str, cfg: dict[str, Any], cache_dir: Path | None) -> Path | None:
    """The cached checkpoint of a tag, or None when it must be downloaded; WeightsError when it cannot be."""
    cached = _cached_hub_file(cfg, cache_dir)
    if cached is not None:
        return cached
    if not hub_reachable():
        raise WeightsError(
            f"weights {arch}/{tag} are not cached and the model hub cannot be reached (no network). "
            f"Download the checkpoint elsewhere and pass it instead: weights=/path/to/{arch}.pt "
            "or an fsspec URI such as s3://bucket/clip/ViT-B-16.pt; or weights=random for a smoke run"
        )
    return None


def resolve_tag(arch: str, tag: str, cache_dir: Path | None) -> tuple[Path, bool]:
    """Local path of an open_clip pretrained tag's checkpoint, and whether it uses QuickGELU."""
    from open_clip.pretrained import download_pretrained

    cfg = tag_config(arch, tag)
    quick_gelu = bool(cfg.get("quick_gelu", False))
    cached = cached_or_reachable(arch, tag, cfg, cache_dir)
    if cached is not None:
        return cached, quick_gelu
    try:
        return Path(download_pretrained(cfg, cache_dir=str(cache_dir) if cache_dir else None)), quick_gelu
    except Exception as exc:
        raise WeightsUnavailable(f"cannot download weights {arch}/{tag}: {type(exc).__name__}: {exc}") from exc


def _cached_hub_file(cfg: dict[str, Any], cache_dir: Path | None) -> Path | None:
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo_id, filename = os.path.split(hub)  # a trailing "/" means open_clip's default file names
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in names:
        found = try_to_load_from_cache(repo_id, name, cache_dir=str(cache_dir) if cache_dir else None)
        if isinstance(found, str):
            return Path(found)
    return None
