"""Faults inside a run on local storage: a killed actor, hostile inputs, unsafe or altered weights.

A predictor actor killed by its pid mid-run is replaced and its batch
retried: every image exactly once. Hostile inputs each give one row (an
error with its reason, or a mask of the right size), never a crash, a hang
or a write outside the output. Weights named in a job file are refused when
they are a pickle carrying code or fail the job file's sha256.

Storage outages are in test_reliability_storage.py; a killed driver in
test_pipeline.py (test_killed_driver_then_incremental_rerun_is_exactly_once);
two runs at once in test_pipeline_lease.py and test_cluster_multinode.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import signal
import struct
import textwrap
import threading
import time
import zlib
from pathlib import Path

import helpers
import numpy as np
import pytest
import ray
from helpers import run_label
from PIL import Image
from ray._private.state import actors as actor_table

from jobs.jobfile import load_job
from jobs.jobfile.launch import run_job
from pipeline import path_of_uri
from sfp_core import SFPConfig, Vocabulary

pytestmark = pytest.mark.timeout(180)

GOLDEN_WEIGHTS = helpers.GOLDEN_WEIGHTS
VOCAB = Vocabulary([["background", "sky"], ["cat"], ["dog"]])
RUN = {"vocabulary": VOCAB, "arch": "SFP-Tiny-16", "weights": "random"}


def rows(output: Path) -> list[dict]:
    return helpers.output_table(output).to_pylist()


def jpeg(height: int, width: int, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_chunk(png_bytes: bytes, kind: bytes, data: bytes) -> bytes:
    """The PNG with one more ancillary chunk right after IHDR (8-byte signature + 25-byte IHDR)."""
    return png_bytes[:33] + png_chunk(kind, data) + png_bytes[33:]


def decompression_bomb(side: int = 20000) -> bytes:
    """A real one: under 1 MB of PNG whose pixel data inflates to side x side bytes (400 MB)."""
    squeeze = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one grey byte per pixel
    idat = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# an actor killed mid-run ---------------------------------------------------------------------------------


def predictor_pids() -> dict[str, int]:
    """This job's live SFP actors: actor id -> pid. Read from the GCS actor table (`ray.util.state`
    needs the dashboard, which the test session's Ray runs without)."""
    alive = actor_table(job_id=ray.get_runtime_context().job_id, actor_state_name="ALIVE")
    return {actor_id: info["Pid"] for actor_id, info in alive.items() if "SFPPredictor" in info["ActorClassName"]}


def test_a_killed_actor_is_replaced_and_its_batch_retried(ray_local, tmp_path):
    source, output = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    names = [f"img_{i:02d}.jpg" for i in range(40)]
    for i, name in enumerate(names):
        (source / name).write_bytes(jpeg(48, 64, seed=i))
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = run_label(
                str(source), str(output), config=SFPConfig(short_side=448), batch_size=2, rows_per_file=2, **RUN
            )
        except BaseException as exc:
            outcome["error"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    deadline = time.monotonic() + 90
    while not predictor_pids():  # ALIVE: the model is loaded and batches are waiting for it
        assert runner.is_alive(), outcome.get("error")
        assert time.monotonic() < deadline, "no actor started in time"
        time.sleep(0.05)
    time.sleep(1.0)  # well into its batches (each takes a fraction of a second)
    (actor_id, pid), *_ = predictor_pids().items()
    os.kill(pid, signal.SIGKILL)
    done_at_kill = len(rows(output)) if list(output.glob("data-*/part-*.parquet")) else 0
    assert runner.is_alive() and done_at_kill < len(names), "the actor was not killed mid-run"
    runner.join(timeout=150)

    assert not runner.is_alive() and "error" not in outcome, outcome.get("error")
    assert outcome["summary"].ok == len(names) and outcome["summary"].error == 0
    assert sorted(r["image_id"] for r in rows(output)) == names  # exactly once: no gaps, no duplicates
    assert actor_table(actor_id)["NumRestarts"] >= 1  # Ray restarted it; the batch it held ran again


# hostile inputs ------------------------------------------------------------------------------------------

# id -> ("ok", (width, height)) or ("error", reason prefix)
HOSTILE: dict[str, tuple[str, object]] = {
    "bomb.png": ("error", "over the pixel limit"),
    "one_pixel.png": ("ok", (1, 1)),
    "panorama.png": ("ok", (20000, 200)),
    "text_chunk.png": ("ok", (30, 20)),  # 16 MB of tEXt: read past, the pixels are fine
    "ztxt_bomb.png": ("error", "not an image"),  # compressed text inflating past Pillow's limit
    "png_named.jpg": ("ok", (30, 20)),  # the extension lies: the content decides
    "text_named.png": ("error", "not an image"),
    "loop_a.jpg": ("error", "unreadable"),  # loop_a.jpg -> loop_b.jpg -> loop_a.jpg
    "loop_b.jpg": ("error", "unreadable"),
    "sub/inner.jpg": ("ok", (64, 48)),  # sub/again -> .. : listed once, the loop is not followed round
    "escape.jpg": ("ok", (40, 30)),  # ../outside/photo.jpg: read where it points, named inside the root
    "bad\\xff.jpg": ("error", "unreadable: the file name is not valid UTF-8"),
    "empty.jpg": ("error", "zero bytes"),
    "truncated.jpg": ("error", "truncated"),
    "pipe.jpg": ("error", "unreadable: not a regular file"),  # a FIFO: opening it would block forever
}


@pytest.fixture
def hostile_tree(tmp_path) -> Path:
    """`in/` holding every hostile input (some pointing into `outside/`); returns `in/`."""
    root, outside = tmp_path / "in", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    small = png(Image.new("RGB", (30, 20), (90, 120, 200)))
    (root / "bomb.png").write_bytes(decompression_bomb())
    (root / "one_pixel.png").write_bytes(png(Image.new("RGB", (1, 1), (255, 0, 0))))
    ramp = np.tile(np.linspace(0, 255, 20000, dtype=np.uint8)[None, :, None], (200, 1, 3))
    (root / "panorama.png").write_bytes(png(Image.fromarray(ramp)))
    (root / "text_chunk.png").write_bytes(with_chunk(small, b"tEXt", b"Comment\x00" + b"A" * (16 << 20)))
    bomb_text = zlib.compress(b"A" * (64 << 20), 9)
    (root / "ztxt_bomb.png").write_bytes(with_chunk(small, b"zTXt", b"Comment\x00\x00" + bomb_text))
    (root / "png_named.jpg").write_bytes(small)
    (root / "text_named.png").write_text("not a picture\n")
    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    (root / "sub" / "inner.jpg").write_bytes(jpeg(48, 64))
    os.symlink("..", root / "sub" / "again")
    (outside / "photo.jpg").write_bytes(jpeg(30, 40))
    os.symlink("../outside/photo.jpg", root / "escape.jpg")
    with open(os.path.join(os.fsencode(root), b"bad\xff.jpg"), "wb") as handle:
        handle.write(jpeg(10, 10))
    (root / "empty.jpg").write_bytes(b"")
    whole = jpeg(90, 120)
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    os.mkfifo(root / "pipe.jpg")
    return root


def tree(path: Path) -> dict[bytes, int]:
    """Every entry under `path` (names as bytes, symlinks not followed) and its size."""
    found = {}
    for directory, dirs, files in os.walk(os.fsencode(path)):
        for name in dirs + files:
            full = os.path.join(directory, name)
            found[os.path.relpath(full, os.fsencode(path))] = os.lstat(full).st_size
    return found


@pytest.mark.timeout(120)
def test_hostile_inputs_each_give_one_row_and_nothing_escapes_the_output(ray_local, hostile_tree, tmp_path):
    root = hostile_tree
    output = tmp_path / "labels" / "out"
    before = {name: tree(tmp_path / name) for name in ("in", "outside")}
    config = SFPConfig(short_side=64, slide_crop=64, slide_stride=48)
    started = time.monotonic()
    summary = run_label(str(root), str(output), config=config, batch_size=4, **RUN)
    assert time.monotonic() - started < 90

    found = {row["image_id"]: row for row in rows(output)}
    assert sorted(found) == sorted(HOSTILE) and summary.total == len(HOSTILE)  # one row each, no strays
    for image_id, (status, detail) in HOSTILE.items():
        row = found[image_id]
        assert row["status"] == status, (image_id, row["error"])
        assert not image_id.startswith("/") and ".." not in image_id.split("/")
        assert path_of_uri(row["uri"])[1] == f"{root}/{image_id}"  # the uri is quoted; it names this file
        if status == "error":
            assert row["error"].startswith(detail), (image_id, row["error"])
            assert row["mask_png"] is None
        else:
            mask = Image.open(io.BytesIO(row["mask_png"]))
            assert mask.size == detail == (row["width"], row["height"]), image_id
    assert "Too many levels of symbolic links" in found["loop_a.jpg"]["error"]

    # Nothing written outside the output; inside it only data files named by the run, and `_` records.
    assert {name: tree(tmp_path / name) for name in ("in", "outside")} == before
    assert sorted(os.listdir(tmp_path / "labels")) == ["out"]
    written = [p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()]
    data = [p for p in written if not p.startswith("_") and p != "README.md"]
    folder = f"data-{summary.run_id}/part-{summary.run_id}-"
    assert data and all(p.startswith(folder) and p.endswith(".parquet") for p in data)
    records = (["_sfp", "runs"], ["_sfp", "lease"], ["_sfp", "current.json"], ["_sfp", "counts.json"])
    assert all(p.split("/")[:2] in records for p in written if p.startswith("_"))


# weights named by a job file -----------------------------------------------------------------------------


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def job_file(tmp_path: Path, weights: str, sha256: str | None) -> Path:
    images, output = tmp_path / "images", tmp_path / "out"
    images.mkdir(parents=True)
    (images / "a.jpg").write_bytes(jpeg(32, 32))
    checksum = f", weights_sha256: '{sha256}'" if sha256 else ""
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: weights-check
        input: {{uri: {images}}}
        output: {{uri: {output}}}
        model: {{arch: SFP-Tiny-16, weights: "{weights}"{checksum}}}
        vocabulary: {{classes: [[background, sky], [cat], [dog]]}}
        sfp: {{short_side: 32, long_side: 64, slide_crop: 32, slide_stride: 16}}
        """)
    )
    return path


def test_weights_uri_is_checked_against_the_job_files_sha256_and_code_pickles_are_refused(ray_local, tmp_path):
    weights = tmp_path / "models" / "tiny.pt"
    weights.parent.mkdir()
    shutil.copy(GOLDEN_WEIGHTS, weights)
    right = hashlib.sha256(weights.read_bytes()).hexdigest()
    uri = f"file://{weights}"

    summary = run_job(load_job(job_file(tmp_path / "right", uri, right)))
    assert summary.ok == 1

    with pytest.raises(Exception, match=f"failed the sha256 check: expected {'0' * 64}, got {right}"):
        run_job(load_job(job_file(tmp_path / "altered", uri, "0" * 64)))
    assert not list((tmp_path / "altered" / "out").glob("*.parquet"))

    evil = tmp_path / "models" / "evil.pt"
    evil.write_bytes(pickle.dumps({"visual.proj": _Payload()}))
    with pytest.raises(Exception, match=r"refusing to load weights .*evil\.pt: it is a pickle that needs code"):
        run_job(load_job(job_file(tmp_path / "evil", f"file://{evil}", None)))
    assert not list((tmp_path / "evil" / "out").glob("*.parquet"))
