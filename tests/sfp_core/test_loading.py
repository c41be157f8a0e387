"""Loading weights from every supported source, and refusing unsafe ones."""

from __future__ import annotations

import io
import os
import pickle
import time
import warnings
import zipfile

import numpy as np
import open_clip
import pytest
import torch
from helpers import GOLDEN, TINY_ARCH
from safetensors.torch import save_file

from sfp_core import SFPSegmenter, WeightsError
from sfp_core.backbone import load_backbone, model_config
from sfp_core.weights import sha256_of


@pytest.fixture(scope="module")
def reference_model():
    """open_clip's own model (QuickGELU, OpenAI layout) with the golden tiny weights."""
    state = torch.load(GOLDEN / "tiny_openai_clip.pt", weights_only=True)
    model = open_clip.model.build_model_from_openai_state_dict(dict(state), quick_gelu=True, cast_dtype=None)
    return model.float().eval()


@pytest.fixture(scope="module")
def probe_inputs():
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 224, 224, generator=gen)
    tokens = open_clip.get_tokenizer(TINY_ARCH)(["a photo of a cat", "stripes"])
    return pixels, tokens


def _embeddings(model, probe_inputs):
    pixels, tokens = probe_inputs
    with torch.inference_mode():
        return model.encode_image(pixels), model.encode_text(tokens)


def _assert_same_model(model, reference_model, probe_inputs):
    image, text = _embeddings(model, probe_inputs)
    ref_image, ref_text = _embeddings(reference_model, probe_inputs)
    torch.testing.assert_close(image, ref_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text, ref_text, atol=1e-5, rtol=1e-5)


def _openai_state() -> dict:
    return torch.load(GOLDEN / "tiny_openai_clip.pt", weights_only=True)


def test_openai_format_state_dict(tmp_path, reference_model, probe_inputs):
    path = tmp_path / "openai.pt"
    torch.save({**_openai_state(), "input_resolution": torch.tensor(224)}, path)
    backbone = load_backbone(TINY_ARCH, str(path))
    assert backbone.quick_gelu
    _assert_same_model(backbone.model, reference_model, probe_inputs)


def test_openai_weights_get_quickgelu_even_on_a_gelu_arch(tmp_path):
    config = dict(model_config(TINY_ARCH))
    config["quick_gelu"] = False
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "SFP-Tiny-16-gelu.json").write_text(__import__("json").dumps(config))
    open_clip.add_model_config(config_dir)
    path = tmp_path / "openai.pt"
    torch.save(_openai_state(), path)
    assert load_backbone("SFP-Tiny-16-gelu", str(path)).quick_gelu
    fp32 = tmp_path / "trained.pt"
    torch.save({"epoch": 3, "state_dict": {k: v.float() for k, v in _openai_state().items()}}, fp32)
    assert not load_backbone("SFP-Tiny-16-gelu", str(fp32)).quick_gelu


def test_open_clip_training_checkpoint(tmp_path, reference_model, probe_inputs):
    state = {f"module.{k}": v.float() for k, v in reference_model.state_dict().items()}
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "run", "state_dict": state}, path)
    backbone = load_backbone(TINY_ARCH, str(path))
    _assert_same_model(backbone.model, reference_model, probe_inputs)


def test_safetensors(tmp_path, reference_model, probe_inputs):
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference_model.state_dict().items()}, str(path))
    backbone = load_backbone(TINY_ARCH, str(path))
    _assert_same_model(backbone.model, reference_model, probe_inputs)


def test_torchscript_archive(tmp_path, reference_model, probe_inputs):
    """OpenAI's original release format: a TorchScript archive, of which only tensors are used."""
    path = tmp_path / "ViT-jit.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(reference_model, probe_inputs, check_trace=False), str(path))
        backbone = load_backbone(TINY_ARCH, str(path))
    assert backbone.quick_gelu
    _assert_same_model(backbone.model, reference_model, probe_inputs)


class _FileWritingSetstate(torch.nn.Module):
    """A scripted module whose `__setstate__` creates a file (torch.from_file with shared=True) when loaded."""

    def __init__(self):
        super().__init__()
        self.w = torch.ones(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        created = torch.from_file("/tmp/sfp-test-torchscript-setstate-ran", shared=True, size=2)
        self.w = state[0] + created * 0
        self.training = state[1]


MARKER_PATH = "/tmp/sfp-test-torchscript-setstate-ran"  # TorchScript takes only a literal path


def test_torchscript_archive_code_never_runs(tmp_path):
    """Loading must neither compile nor run the archive's TorchScript (here a __setstate__ that writes a file)."""
    path = tmp_path / "evil-jit.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_FileWritingSetstate()), str(path))
    if os.path.exists(MARKER_PATH):
        os.remove(MARKER_PATH)
    with pytest.raises(WeightsError):
        load_backbone(TINY_ARCH, str(path))
    assert not os.path.exists(MARKER_PATH), "the archive's __setstate__ ran while loading weights"
    # The payload is live: TorchScript's own loader runs it and the file appears.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path))
    assert os.path.exists(MARKER_PATH)
    os.remove(MARKER_PATH)


def test_torchscript_archive_naming_python_code_is_refused(tmp_path):
    path = tmp_path / "evil-global.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil-global/code/__torch__.py", "")
        archive.writestr("evil-global/data.pkl", pickle.dumps({"visual.proj": _Payload()}, protocol=2))
    with pytest.raises(WeightsError, match=r"refusing to load .*posix.system|refusing to load .*os.system"):
        load_backbone(TINY_ARCH, str(path))


def test_not_a_checkpoint_directory_or_device(tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightsError, match="not a checkpoint"):
        load_backbone(TINY_ARCH, str(noise))
    folder = tmp_path / "weights.pt"
    folder.mkdir()
    with pytest.raises(WeightsError, match="is a directory"):
        load_backbone(TINY_ARCH, str(folder))
    start = time.monotonic()
    with pytest.raises(WeightsError, match="not a regular file"):
        load_backbone(TINY_ARCH, "/dev/zero", sha256="0" * 64)
    with pytest.raises(WeightsError, match="not a regular file"):
        sha256_of("/dev/zero")
    assert time.monotonic() - start < 5


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_carrying_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    buffer = io.BytesIO()
    torch.save({"visual.proj": _Payload()}, buffer, pickle_protocol=2)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(WeightsError, match="refusing to load"):
        load_backbone(TINY_ARCH, str(path))
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"x": _Payload()}))
    with pytest.raises(WeightsError, match="refusing to load"):
        load_backbone(TINY_ARCH, str(raw))


def test_sha256_is_checked(tmp_path):
    path = tmp_path / "openai.pt"
    torch.save(_openai_state(), path)
    load_backbone(TINY_ARCH, str(path), sha256=sha256_of(path))
    with pytest.raises(WeightsError, match="sha256"):
        load_backbone(TINY_ARCH, str(path), sha256="0" * 64)


def test_fsspec_uri_is_fetched_once_into_the_cache(tmp_path, reference_model, probe_inputs):
    import fsspec

    fs = fsspec.filesystem("memory")
    buffer = io.BytesIO()
    torch.save(_openai_state(), buffer)
    fs.pipe("/weights/tiny.pt", buffer.getvalue())
    cache = tmp_path / "cache"
    backbone = load_backbone(TINY_ARCH, "memory://weights/tiny.pt", cache_dir=cache)
    _assert_same_model(backbone.model, reference_model, probe_inputs)
    cached = list(cache.rglob("tiny.pt"))
    assert len(cached) == 1 and not list(cache.rglob("_partial-*"))
    mtime = cached[0].stat().st_mtime_ns
    load_backbone(TINY_ARCH, "memory://weights/tiny.pt", cache_dir=cache)
    assert cached[0].stat().st_mtime_ns == mtime
    with pytest.raises(WeightsError, match="not found"):
        load_backbone(TINY_ARCH, "memory://weights/missing.pt", cache_dir=cache)


def test_wrong_architecture_names_the_mismatch(tmp_path):
    path = tmp_path / "openai.pt"
    torch.save(_openai_state(), path)
    with pytest.raises(WeightsError, match="do not fit architecture ViT-B-16"):
        load_backbone("ViT-B-16", str(path))


def test_missing_file_unknown_tag_and_unknown_arch():
    with pytest.raises(WeightsError, match="does not exist"):
        load_backbone(TINY_ARCH, "/nonexistent/weights.pt")
    with pytest.raises(WeightsError, match="open_clip tag"):
        load_backbone("ViT-B-16", "no-such-tag")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        load_backbone("ViT-Nope", "random")


def test_hub_tag_without_network_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        load_backbone("ViT-B-16", "openai", cache_dir=tmp_path / "cache")
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "ViT-B-16/openai" in message and "pass it instead" in message


def test_random_weights_are_seeded_and_loud():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        a = load_backbone(TINY_ARCH, "random", seed=3)
    with pytest.warns(UserWarning):
        b = load_backbone(TINY_ARCH, "random", seed=3)
    for (key, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), key


def test_from_pretrained_accepts_vocabulary_forms(tmp_path):
    vocab_file = tmp_path / "classes.txt"
    vocab_file.write_text("background, sky\n\ncat\n dog , puppy \n")
    segmenter = SFPSegmenter.from_pretrained(TINY_ARCH, str(GOLDEN / "tiny_openai_clip.pt"), vocab_file)
    assert segmenter.vocabulary.classes == (("background", "sky"), ("cat",), ("dog", "puppy"))
    result = segmenter.segment([np.zeros((40, 50, 3), dtype=np.uint8)])[0]
    assert result.mask.shape == (40, 50)
    with pytest.raises(ValueError, match="vocabulary is required"):
        SFPSegmenter.from_pretrained(TINY_ARCH, "random")


def test_zip_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_backbone(TINY_ARCH, str(path))
