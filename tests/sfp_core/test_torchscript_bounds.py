"""Hostile TorchScript archives: whatever their pickle and zip headers claim, reading them costs bounded memory.

The archives are built by hand with the globals a real TorchScript `data.pkl` names, so each one is a
few bytes to a few megabytes on disk (issue 20 item 8).
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from sfp_core import WeightsError
from sfp_core import weights as weights_module
from sfp_core.weights import read_checkpoint

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20


class _Storage:
    """Stands for `data/<key>` in the pickle: written as TorchScript's persistent storage reference."""

    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _View:
    """A tensor as TorchScript pickles it: `_rebuild_tensor_v2(storage, offset, size, stride, ...)`."""

    def __init__(self, storage: _Storage, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.size, self.stride = storage, size, stride

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, self.size, self.stride, False, OrderedDict())


class _ArchivePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.ByteStorage, obj.key, "cpu", obj.numel)
        return None


def _data_pkl(tensors: dict[str, _View]) -> bytes:
    out = io.BytesIO()
    _ArchivePickler(out, protocol=2).dump(tensors)
    return out.getvalue()


def _write_archive(
    path: Path,
    tensors: dict[str, _View],
    storages: dict[str, bytes],
    compression: int = zipfile.ZIP_STORED,
    claimed_sizes: dict[str, int] | None = None,
    data_pkl: bytes | None = None,
) -> Path:
    """A TorchScript-shaped zip; `claimed_sizes` makes the central directory lie about entries' sizes."""
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr("hostile/code/__torch__.py", "")
        archive.writestr("hostile/data.pkl", data_pkl if data_pkl is not None else _data_pkl(tensors))
        for key, raw in storages.items():
            archive.writestr(f"hostile/data/{key}", raw)
        for name, size in (claimed_sizes or {}).items():
            archive.getinfo(f"hostile/{name}").file_size = size  # written into the central directory on close
    return path


_MEASURE = """
import json, resource, sys
from sfp_core.weights import WeightsError, read_checkpoint
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_checkpoint(sys.argv[1])
    outcome = "loaded"
except WeightsError as exc:
    outcome = "WeightsError: " + str(exc)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"outcome": outcome, "grown": grown}))
"""


def _load_in_fresh_process(path: Path) -> tuple[str, int]:
    """What loading `path` ends in, and how far it raised the process's peak memory (bytes)."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["outcome"], result["grown"]


def test_a_one_byte_storage_viewed_as_1_5e9_elements_is_refused_without_the_memory(tmp_path):
    storage = _Storage("0", 1)
    path = _write_archive(tmp_path / "broadcast.pt", {"w": _View(storage, (1_500_000_000,), (0,))}, {"0": b"\x01"})
    assert path.stat().st_size < 1024
    outcome, grown = _load_in_fresh_process(path)
    assert outcome.startswith("WeightsError") and str(path) in outcome, outcome
    assert "more elements than its storage" in outcome, outcome
    assert grown < 200 * MIB, f"peak memory grew by {grown / MIB:.0f} MiB"


def test_4e10_elements_are_a_weights_error_not_a_runtime_error(tmp_path):
    storage = _Storage("0", 1)
    path = _write_archive(tmp_path / "huge.pt", {"w": _View(storage, (40_000_000_000,), (0,))}, {"0": b"\x01"})
    with pytest.raises(WeightsError, match="more elements than its storage") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)


def test_negative_sizes_and_strides_are_refused(tmp_path):
    storage = _Storage("0", 16)
    for size, stride in (((-4,), (1,)), ((4,), (-1,)), ((2, 2), (1,))):
        path = _write_archive(tmp_path / "negative.pt", {"w": _View(storage, size, stride)}, {"0": bytes(16)})
        with pytest.raises(WeightsError, match="malformed shape"):
            read_checkpoint(path)


def test_1500_deflated_one_mib_storages_are_refused_within_bounded_memory(tmp_path):
    storages = {str(i): bytes(MIB) for i in range(1500)}
    tensors = {f"w{i}": _View(_Storage(str(i), MIB), (MIB,), (1,)) for i in range(1500)}
    path = _write_archive(tmp_path / "bomb.pt", tensors, storages, compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 2 * MIB
    outcome, grown = _load_in_fresh_process(path)
    assert outcome.startswith("WeightsError") and str(path) in outcome, outcome
    assert "bytes allowed" in outcome, outcome
    assert grown < 200 * MIB, f"peak memory grew by {grown / MIB:.0f} MiB"


def test_many_views_of_one_storage_cannot_multiply_it(tmp_path):
    """Each view fits its storage, but copying 20 views of one 1 MiB storage would need 20 MiB."""
    storage = _Storage("0", MIB)
    tensors = {f"w{i}": _View(storage, (MIB,), (1,)) for i in range(20)}
    path = _write_archive(tmp_path / "views.pt", tensors, {"0": bytes(MIB)})
    with pytest.raises(WeightsError, match="bytes allowed") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)


def test_storages_past_the_stated_limit_are_refused(tmp_path, monkeypatch):
    """The stated limit (2 GiB in production) holds for plain stored archives too; here shrunk to 1 MiB."""
    monkeypatch.setattr(weights_module, "MAX_ARCHIVE_BYTES", MIB)
    tensors = {f"w{i}": _View(_Storage(str(i), MIB // 2), (MIB // 2,), (1,)) for i in range(3)}
    path = _write_archive(tmp_path / "big.pt", tensors, {str(i): bytes(MIB // 2) for i in range(3)})
    with pytest.raises(WeightsError, match="bytes allowed"):
        read_checkpoint(path)
    monkeypatch.setattr(weights_module, "MAX_ARCHIVE_BYTES", 2 * MIB)
    assert set(read_checkpoint(path).state_dict) == {"w0", "w1", "w2"}


def test_zip_headers_that_lie_about_sizes(tmp_path):
    """An entry is never inflated past the size its header claims, and a claim its data does not bear out fails."""
    storage = _Storage("0", 16)
    tensors = {"w": _View(storage, (16,), (1,))}
    pickled = _data_pkl(tensors)
    # data.pkl claims to be its pickle alone, but 64 MiB of zeros follow in the deflated stream.
    path = _write_archive(
        tmp_path / "short-claim.pt",
        tensors,
        {"0": bytes(16)},
        compression=zipfile.ZIP_DEFLATED,
        claimed_sizes={"data.pkl": len(pickled)},
        data_pkl=pickled + bytes(64 * MIB),
    )
    with pytest.raises(WeightsError) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)
    # data.pkl claims a terabyte.
    path = _write_archive(tmp_path / "huge-claim.pt", tensors, {"0": bytes(16)}, claimed_sizes={"data.pkl": 1 << 40})
    with pytest.raises(WeightsError, match=r"data\.pkl claims"):
        read_checkpoint(path)
    # A storage claims 256 bytes but holds 16.
    path = _write_archive(
        tmp_path / "long-claim.pt",
        {"w": _View(_Storage("0", 256), (256,), (1,))},
        {"0": bytes(16)},
        compression=zipfile.ZIP_DEFLATED,
        claimed_sizes={"data/0": 256},
    )
    with pytest.raises(WeightsError, match="fewer bytes"):
        read_checkpoint(path)
