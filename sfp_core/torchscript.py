"""The tensors of a TorchScript archive, read as data: nothing in the archive runs.

OpenAI released CLIP as TorchScript archives: a zip of a pickled module tree
(`data.pkl`), its compiled code (`code/`) and the raw tensor storages
(`data/<key>`). `torch.jit.load` compiles and runs that code, and a module's
`__setstate__` may call any TorchScript operator (`torch.from_file(...,
shared=True)` creates files, for one). Here `data.pkl` goes through an
unpickler that knows only how to rebuild tensors from the stored bytes and
stands a plain container in for every scripted class; the code is never read.
What an archive can make us hold is bounded, whatever its pickle or zip headers
claim: no view has more elements than its storage, and the storages read and the
tensors copied out of them each total at most the caller's `max_bytes`.
See docs/design.md ("Weights are data").
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch

# Storage classes a TorchScript pickle names, and the element type of their bytes.
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_SCRIPTED_CLASS_PREFIX = "__torch__"
# OpenAI's archives hold a few hundred tensors and a data.pkl of some 100 KB (~140 bytes a tensor);
# these leave ample room and bound what a hostile pickle or zip directory can make us build.
_MAX_PICKLE_BYTES = 4 << 20
_MAX_ENTRIES = 65_536


class ArchiveError(ValueError):
    """The archive is not a TorchScript archive this reader can take apart as data."""


class ScriptedObject:
    """Stands in for an instance of a scripted class: keeps its pickled state, runs none of its methods."""

    class_name = ""
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _stand_in(class_name: str, made: dict[str, type[ScriptedObject]]) -> type[ScriptedObject]:
    """One plain subclass per scripted class name (the pickle's NEWOBJ needs a type)."""
    if class_name not in made:
        made[class_name] = type("ScriptedObject", (ScriptedObject,), {"class_name": class_name})
    return made[class_name]


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _ints(values: Any) -> tuple[int, ...] | None:
    if isinstance(values, (tuple, list)) and all(type(v) is int for v in values):
        return tuple(values)
    return None


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    """A view of the flat storage with the recorded shape; requires_grad and hooks are ignored.

    The view may neither reach outside its storage nor hold more elements than it: a one-byte
    storage viewed with stride 0 as 1.5e9 elements would cost 1.5 GB once copied.
    """
    if not isinstance(storage, torch.Tensor):
        raise ArchiveError("a tensor is rebuilt from something that is not a storage")
    shape, steps = _ints(size), _ints(stride)
    if (
        shape is None
        or steps is None
        or type(offset) is not int
        or len(shape) != len(steps)
        or min((offset, *shape, *steps)) < 0
    ):
        raise ArchiveError(
            f"a tensor has a malformed shape {size!r:.80}, stride {stride!r:.80} or offset {offset!r:.20}"
        )
    count, available = math.prod(shape), storage.numel()
    if count > available:
        raise ArchiveError(f"a tensor of shape {shape} has more elements than its storage of {available}")
    end = offset + sum((n - 1) * s for n, s in zip(shape, steps, strict=True)) + 1 if count else offset
    if end > available:
        raise ArchiveError(f"a tensor of shape {shape} reaches past its storage of {available} elements")
    return storage.as_strided(shape, steps, offset)


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


def _passthrough(value: Any, *_: Any) -> Any:
    return value


# Every global a TorchScript `data.pkl` may name, mapped to a harmless stand-in; anything else is refused.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.jit._pickle", "restore_type_tag"): _passthrough,
    ("torch.jit._pickle", "build_intlist"): _passthrough,
    ("torch.jit._pickle", "build_doublelist"): _passthrough,
    ("torch.jit._pickle", "build_boollist"): _passthrough,
    ("torch.jit._pickle", "build_tensorlist"): _passthrough,
}


def _too_big(max_bytes: int) -> ArchiveError:
    return ArchiveError(
        f"its tensors need more than the {max_bytes:,} bytes allowed for this archive "
        "(save larger models as safetensors)"
    )


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, size: int) -> bytes:
    """The first `size` bytes of an entry, inflating no more whatever its header claims."""
    with archive.open(info) as entry:
        data = entry.read(size)
    if len(data) != size:
        raise ArchiveError(f"{info.filename} holds fewer bytes than its header says")
    return data


class _DataOnlyUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, prefix: str, payload: bytes, max_bytes: int):
        super().__init__(io.BytesIO(payload))
        self._archive = archive
        self._prefix = prefix
        self._max_bytes = max_bytes
        self._bytes_left = max_bytes
        self._storages: dict[str, torch.Tensor] = {}
        self._stand_ins: dict[str, type[ScriptedObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == _SCRIPTED_CLASS_PREFIX or module.startswith(_SCRIPTED_CLASS_PREFIX + "."):
            return _stand_in(f"{module}.{name}", self._stand_ins)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise ArchiveError(f"it names {module}.{name}, which is not part of a plain tensor archive")
        return allowed

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ArchiveError(f"unknown persistent reference {str(pid)[:80]}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise ArchiveError(f"malformed storage reference for {str(key)[:80]!r}")
        if key not in self._storages:
            self._storages[key] = self._read_storage(str(key), storage_type.dtype, numel)
        return self._storages[key]

    def _read_storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        name = f"{self._prefix}data/{key}"
        size = numel * torch.empty((), dtype=dtype).element_size()
        if size > self._bytes_left:
            raise _too_big(self._max_bytes)
        self._bytes_left -= size
        try:
            info = self._archive.getinfo(name)
        except KeyError as exc:
            raise ArchiveError(f"storage {name[:120]} is missing") from exc
        if info.file_size < size:
            raise ArchiveError(f"storage {name} holds {info.file_size} bytes, {size} expected")
        raw = bytearray(_read_entry(self._archive, info, size))
        return torch.frombuffer(raw, dtype=dtype) if numel else torch.empty(0, dtype=dtype)


def is_torchscript_archive(archive: zipfile.ZipFile) -> bool:
    return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


def _data_pickle_prefix(archive: zipfile.ZipFile) -> str:
    roots = [name[: -len("data.pkl")] for name in archive.namelist() if name.endswith("/data.pkl")]
    roots = [root for root in roots if root.count("/") == 1]
    if len(roots) != 1:
        raise ArchiveError("it has no single <root>/data.pkl")
    return roots[0]


def _named_tensors(obj: Any, prefix: str, depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors in a scripted module tree, named by attribute path like `state_dict` names them."""
    if depth > 64:
        raise ArchiveError("its module tree is nested deeper than 64 levels")
    if isinstance(obj, ScriptedObject):
        obj = obj.state
    if not isinstance(obj, dict):
        return
    for name, value in obj.items():
        if not isinstance(name, str):
            continue
        if isinstance(value, torch.Tensor):
            yield prefix + name, value
        elif isinstance(value, ScriptedObject):
            yield from _named_tensors(value, f"{prefix}{name}.", depth + 1)


def read_archive_tensors(archive: zipfile.ZipFile, max_bytes: int) -> dict[str, torch.Tensor]:
    """Every tensor attribute of the archived module tree (parameters, buffers and plain tensor attributes).

    TorchScript's pickle does not tell parameters from other tensor attributes,
    so callers drop the names their model does not have. The storages read, and
    the tensors copied out of them, each total at most `max_bytes`; any failure
    is an ArchiveError.
    """
    try:
        return _read(archive, max_bytes)
    except ArchiveError:
        raise
    except Exception as exc:  # a malformed pickle, a damaged entry (BadZipFile, zlib.error, EOFError), no memory
        raise ArchiveError(f"it cannot be read: {type(exc).__name__}: {str(exc)[:300]}") from exc


def _read(archive: zipfile.ZipFile, max_bytes: int) -> dict[str, torch.Tensor]:
    if len(archive.infolist()) > _MAX_ENTRIES:
        raise ArchiveError(f"it has more than {_MAX_ENTRIES} entries")
    prefix = _data_pickle_prefix(archive)
    info = archive.getinfo(f"{prefix}data.pkl")
    if info.file_size > _MAX_PICKLE_BYTES:
        raise ArchiveError(f"its data.pkl claims {info.file_size:,} bytes, more than the {_MAX_PICKLE_BYTES:,} allowed")
    root = _DataOnlyUnpickler(archive, prefix, _read_entry(archive, info, info.file_size), max_bytes).load()
    tensors = dict(_named_tensors(root, ""))
    if sum(tensor.numel() * tensor.element_size() for tensor in tensors.values()) > max_bytes:
        raise _too_big(max_bytes)
    return {name: tensor.clone() for name, tensor in tensors.items()}
