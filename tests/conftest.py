"""Shared fixtures: the golden tiny CLIP and a segmenter built on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import GOLDEN, TINY_ARCH


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


# --- pipeline: a real S3 server, a local Ray, a generated corpus ------------------------------------------


@pytest.fixture(scope="session")
def s3_credentials():
    """Random S3 keys in the environment for the whole session (set before Ray starts, so workers have them)."""
    import secrets

    creds = {
        "AWS_ACCESS_KEY_ID": "SFPTEST" + secrets.token_hex(6).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in creds.items():
            patch.setenv(name, value)
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups from the AWS SDK
        yield creds


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory, s3_credentials):
    """SeaweedFS on 127.0.0.1 (free ports) that accepts only the session's credentials."""
    from s3server import SeaweedS3

    server = SeaweedS3.started(tmp_path_factory.mktemp("seaweedfs"), s3_credentials)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_local(s3_credentials):
    """A local Ray with 2 CPUs for the session (never a stale cluster: address="local")."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def image_corpus(tmp_path_factory):
    """Images of many kinds plus broken files; `expected[image_id]` is ("ok", (W, H)) or ("error", reason)."""
    import io
    import struct
    import zlib

    from PIL import Image

    root = tmp_path_factory.mktemp("corpus")
    gen = np.random.default_rng(7)
    expected: dict[str, tuple[str, object]] = {}

    def pixels(height: int, width: int) -> np.ndarray:
        ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
        noise = gen.normal(0, 20, (height, width, 3))
        return np.clip(ramp + noise + gen.integers(0, 100, 3), 0, 255).astype(np.uint8)

    def save(name: str, image: Image.Image, display_size: tuple[int, int] | None = None, **kw) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **kw)
        expected[name] = ("ok", display_size or image.size)

    def raw(name: str, data: bytes, outcome: tuple[str, object] | None) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if outcome:
            expected[name] = outcome

    def png_chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def png16_rgb(arr: np.ndarray) -> bytes:
        height, width = arr.shape[:2]
        rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(height))
        header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows))

    def exif(orientation: int) -> bytes:
        data = Image.Exif()
        data[0x0112] = orientation
        return data.tobytes()

    save("rgb.jpg", Image.fromarray(pixels(48, 64)), quality=90)
    save("upper.JPG", Image.fromarray(pixels(30, 40)))
    save("nested/a/b/deep.jpeg", Image.fromarray(pixels(70, 52)))
    save("gray.png", Image.fromarray(pixels(40, 50)[..., 0]))
    save("gray16.png", Image.fromarray((gen.integers(0, 65535, (30, 40))).astype(np.uint16)))
    raw("rgb16.png", png16_rgb(gen.integers(0, 65535, (20, 30, 3)).astype(np.uint16)), ("ok", (30, 20)))
    save("palette.png", Image.fromarray(pixels(45, 60)).convert("P"))
    palette_alpha = Image.fromarray(pixels(33, 44)).convert("P")
    save("palette_alpha.png", palette_alpha, transparency=0)
    save("rgba.png", Image.fromarray(np.dstack([pixels(64, 48), gen.integers(0, 255, (64, 48), dtype=np.uint8)])))
    save("la.png", Image.fromarray(pixels(30, 30)[..., :2].copy()))
    save("cmyk.jpg", Image.fromarray(pixels(42, 56)).convert("CMYK"))
    save("exif_rot90.jpg", Image.fromarray(pixels(60, 80)), display_size=(60, 80), exif=exif(6))
    save("exif_rot180.jpg", Image.fromarray(pixels(24, 40)), exif=exif(3))
    save("tiny.png", Image.fromarray(pixels(1, 1)))

    buffer = io.BytesIO()
    Image.fromarray(pixels(90, 120)).save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    raw("zero.jpg", b"", ("error", "zero bytes"))
    raw("truncated.jpg", jpeg[: len(jpeg) // 2], ("error", "truncated"))
    raw("text.jpg", b"this is not an image\n", ("error", "not an image"))
    huge_header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    huge = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", huge_header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    raw("huge.png", huge, ("error", "over the pixel limit"))
    # not inputs: other extensions, hidden and underscore names
    raw("notes.txt", b"hello", None)
    raw(".hidden.jpg", jpeg, None)
    raw("_private/skip.jpg", jpeg, None)
    raw("nested/.cache/x.png", jpeg, None)
    return root, expected
