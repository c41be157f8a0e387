"""`pipeline.label` end to end on local folders: exactly once, right sizes, same masks as the bare segmenter,
incremental re-runs, a killed driver, overwrite without a mix."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import helpers
import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import run_label
from PIL import Image, ImageOps

from pipeline import SCHEMA, ForeignFilesInOutput, InputHasNoImages, read_image_ids
from sfp_core import SFPConfig, SFPSegmenter, Vocabulary

pytestmark = pytest.mark.timeout(240)

ARCH = "SFP-Tiny-16"
GOLDEN_WEIGHTS = str(helpers.GOLDEN_WEIGHTS)
CONFIG = SFPConfig(short_side=224)
VOCAB = Vocabulary([["background", "sky"], ["cat"], ["dog"]])
RUN = {"vocabulary": VOCAB, "arch": ARCH, "config": CONFIG}


def read_output(path: Path):
    return helpers.output_table(path)


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def copy_images(root: Path, names: list[str], target: Path) -> None:
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / name, target / name)


@pytest.fixture(scope="module")
def labelled(ray_local, image_corpus, tmp_path_factory):
    """The whole corpus labelled once (overwrite, with confidence maps, several files)."""
    root, _ = image_corpus
    output = tmp_path_factory.mktemp("labelled") / "out"
    summary = run_label(
        str(root), str(output), weights=GOLDEN_WEIGHTS, mode="overwrite", confidence=True, rows_per_file=5, **RUN
    )
    return summary, read_output(output), output


def test_every_input_exactly_once_with_a_mask_or_a_reason(labelled, image_corpus):
    summary, table, _ = labelled
    root, expected = image_corpus
    rows = table.to_pylist()
    ids = [row["image_id"] for row in rows]
    assert len(ids) == len(set(ids)) and set(ids) == set(expected)
    assert table.schema.equals(SCHEMA)
    identity = json.loads(table.schema.metadata[b"sfp_label"])  # a reader of one file can name the classes
    assert identity["classes"] == [list(names) for names in VOCAB.classes]
    assert identity["config_hash"] == CONFIG.config_hash() and identity["arch"] == ARCH
    for row in rows:
        status, detail = expected[row["image_id"]]
        assert row["status"] == status, row["image_id"]
        assert row["uri"] == f"file://{root}/{row['image_id']}"
        assert (row["model"], row["config_hash"], row["run_id"]) == (
            f"{ARCH}:{GOLDEN_WEIGHTS}",
            CONFIG.config_hash(),
            summary.run_id,
        )
        if status == "error":
            assert row["error"].startswith(f"{detail}: "), row
            assert row["mask_png"] is None and row["confidence_png"] is None and row["outliers"] is None
            continue
        width, height = detail
        assert row["error"] is None and (row["width"], row["height"]) == (width, height), row["image_id"]
        mask, confidence = png(row["mask_png"]), png(row["confidence_png"])
        assert mask.shape == confidence.shape == (height, width) and mask.dtype == confidence.dtype == np.uint8
        ids_in_mask, areas = np.unique(mask, return_counts=True)
        assert row["class_ids"] == ids_in_mask.tolist() and row["class_pixels"] == areas.tolist()
        assert 0.0 < row["mean_confidence"] <= 1.0
        assert abs(confidence.mean() / 255 - row["mean_confidence"]) < 0.01
        assert row["outlier_count"] == len(row["outliers"]) and row["windows"] >= 1
        for outlier in row["outliers"]:
            assert 0 <= outlier["x0"] < outlier["x1"] <= width and 0 <= outlier["y0"] < outlier["y1"] <= height
    errors = sum(1 for status, _ in expected.values() if status == "error")
    assert (summary.ok, summary.error, summary.skipped, summary.total) == (len(expected) - errors, errors, 0, len(ids))


def test_run_records_a_manifest_and_leaves_no_staging(labelled):
    summary, table, output = labelled
    assert not (output / "_sfp" / "staging").exists()
    manifest = json.loads((output / "_sfp" / "runs" / f"{summary.run_id}.json").read_text())
    assert summary.manifest_uri == f"file://{output}/_sfp/runs/{summary.run_id}.json"
    assert manifest["status"] == "succeeded"
    assert manifest["counts"] == {"ok": summary.ok, "error": summary.error, "skipped": 0, "total": summary.total}
    assert manifest["config"] == CONFIG.to_dict() and manifest["config_hash"] == CONFIG.config_hash()
    assert manifest["images_per_second"] > 0 and manifest["ended_at"] >= manifest["started_at"]
    assert {"python", "torch", "ray", "pyarrow", "open_clip_torch", "sfp-label"} <= set(manifest["versions"])
    written = sorted(str(p.relative_to(output)) for p in output.glob("data-*/*.parquet"))
    assert sorted(manifest["files"]) == written == list(summary.files)
    assert len(summary.files) >= 2 and all(name.startswith(f"data-{summary.run_id}/") for name in summary.files)
    assert sum(pq.read_metadata(output / name).num_rows for name in summary.files) == table.num_rows


def test_masks_equal_the_segmenter_in_one_process(labelled, image_corpus):
    _, table, _ = labelled
    root, expected = image_corpus
    ok_ids = sorted(i for i, (status, _) in expected.items() if status == "ok")
    images = []
    for image_id in ok_ids:
        image = ImageOps.exif_transpose(Image.open(root / image_id))
        if image.mode.startswith("I"):  # 16-bit grey: the top byte
            grey = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
            images.append(np.repeat(grey[:, :, None], 3, axis=2))
        else:
            images.append(np.array(image.convert("RGB")))
    segmenter = SFPSegmenter.from_pretrained(ARCH, GOLDEN_WEIGHTS, VOCAB, CONFIG)
    results = segmenter.segment(images)
    rows = {row["image_id"]: row for row in table.to_pylist()}
    for image_id, result in zip(ok_ids, results, strict=True):
        row = rows[image_id]
        assert np.array_equal(png(row["mask_png"]), result.mask), image_id
        # Batched with other images, the float sums differ in the last bits: a quantisation step at most.
        quantised = np.rint(result.confidence * 255).astype(np.int16)
        assert np.abs(png(row["confidence_png"]).astype(np.int16) - quantised).max() <= 1
        assert row["outlier_count"] == result.stats.outlier_count
        assert row["class_pixels"] == [result.stats.class_pixels[c] for c in row["class_ids"]]
        assert [(o["window"], o["row"], o["col"]) for o in row["outliers"]] == [
            (o.window, o.row, o.col) for o in result.outliers
        ]


def test_incremental_runs_label_only_new_images(ray_local, image_corpus, tmp_path):
    root, expected = image_corpus
    names = sorted(expected)
    source, output = tmp_path / "in", tmp_path / "out"
    copy_images(root, names[:6], source)
    first = run_label(str(source), str(output), weights="random", mode="incremental", rows_per_file=4, **RUN)
    assert (first.ok + first.error, first.skipped) == (6, 0)

    copy_images(root, names[6:9], source)
    second = run_label(str(source), str(output), weights="random", mode="incremental", **RUN)
    assert (second.ok + second.error, second.skipped, second.total) == (3, 6, 9)
    assert {row["run_id"] for row in read_output(output).to_pylist() if row["image_id"] in names[6:9]} == {
        second.run_id
    }

    third = run_label(str(source), str(output), weights="random", mode="incremental", **RUN)
    assert (third.ok + third.error, third.skipped, third.files) == (0, 9, ())
    ids = read_output(output).column("image_id").to_pylist()
    assert sorted(ids) == sorted(names[:9]) and read_image_ids(str(output)) == set(names[:9])


def test_overwrite_swaps_the_output_and_readers_never_see_a_mix(ray_local, image_corpus, tmp_path):
    root, expected = image_corpus
    names = sorted(n for n, (status, _) in expected.items() if status == "ok")
    source, output = tmp_path / "in", tmp_path / "out"
    copy_images(root, names[:4], source)
    old = run_label(str(source), str(output), weights="random", mode="overwrite", rows_per_file=1, **RUN)
    shutil.rmtree(source)
    copy_images(root, names[4:10], source)

    snapshots: list[set[str]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                runs = set(read_output(output).column("run_id").to_pylist())
            except (OSError, ValueError):  # a file deleted between listing and reading: look again
                continue
            snapshots.append(runs)

    watcher = threading.Thread(target=reader, daemon=True)
    watcher.start()
    try:
        new = run_label(str(source), str(output), weights="random", mode="overwrite", rows_per_file=1, **RUN)
    finally:
        stop.set()
        watcher.join()
    assert snapshots and all(len(runs) <= 1 for runs in snapshots), [s for s in snapshots if len(s) > 1][:3]
    assert {old.run_id} in snapshots
    table = read_output(output)
    assert set(table.column("run_id").to_pylist()) == {new.run_id}
    assert sorted(table.column("image_id").to_pylist()) == names[4:10]

    assert (output / f"data-{old.run_id}").is_dir()  # replaced, kept for readers that resolved it just before

    before = sorted(str(p.relative_to(output)) for p in output.rglob("*.parquet"))
    with pytest.raises(Exception, match="sha256"):
        run_label(str(source), str(output), weights=GOLDEN_WEIGHTS, weights_sha256="0" * 64, mode="overwrite", **RUN)
    assert sorted(str(p.relative_to(output)) for p in output.rglob("*.parquet")) == before  # nothing changed
    failed = [json.loads(p.read_text()) for p in (output / "_sfp" / "runs").glob("*.json")]
    assert [m["status"] for m in failed].count("failed") == 1
    assert not (output / "_sfp" / "staging").exists()


def test_a_replaced_data_folder_goes_once_its_time_is_up(ray_local, image_corpus, tmp_path, monkeypatch):
    root, expected = image_corpus
    names = sorted(n for n, (status, _) in expected.items() if status == "ok")[:2]
    source, output = tmp_path / "in", tmp_path / "out"
    copy_images(root, names, source)
    first = run_label(str(source), str(output), weights="random", mode="overwrite", **RUN)
    second = run_label(str(source), str(output), weights="random", mode="overwrite", **RUN)
    assert sorted(p.name for p in output.glob("data-*")) == [f"data-{first.run_id}", f"data-{second.run_id}"]
    monkeypatch.setattr("pipeline.output.versions.KEEP_REPLACED_S", 0.0)
    third = run_label(str(source), str(output), weights="random", mode="incremental", **RUN)
    assert third.skipped == 2 and [p.name for p in output.glob("data-*")] == [f"data-{second.run_id}"]
    assert json.loads((output / "_sfp" / "current.json").read_text())["replaced"] == []


def test_killed_driver_then_incremental_rerun_is_exactly_once(ray_local, image_corpus, tmp_path):
    root, _ = image_corpus
    source, output = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    names = [f"copy_{i:02d}.jpg" for i in range(40)]
    for name in names:
        shutil.copy(root / "rgb.jpg", source / name)
    driver = textwrap.dedent(
        f"""
        from pipeline import Destination, LabelRequest, ModelChoice, Resources, Source, label
        from sfp_core import SFPConfig, Vocabulary
        label(LabelRequest(
            input=Source(uri={str(source)!r}),
            output=Destination(uri={str(output)!r}, mode="incremental", rows_per_file=2),
            vocabulary=Vocabulary({[list(c) for c in VOCAB.classes]!r}),
            model=ModelChoice(arch={ARCH!r}, weights="random"),
            config=SFPConfig(short_side=224),
            resources=Resources(batch_size=2),
        ))
        """
    )
    helpers.kill_after_first_commit(driver, output, ray_local.get_runtime_context().gcs_address)
    committed = read_image_ids(str(output))
    assert 0 < len(committed) < len(names), "the driver was not killed midway"
    (dead_run,) = [p.name for p in (output / "_sfp" / "staging").iterdir()]
    half = output / "_sfp" / "staging" / dead_run / "part-half-written.parquet"
    half.write_bytes(next(output.glob("data-*/part-*.parquet")).read_bytes()[:300])  # as if cut off mid-write
    assert sorted(read_output(output).column("image_id").to_pylist()) == sorted(committed)  # staged files: not data

    summary = run_label(str(source), str(output), weights="random", mode="incremental", **RUN)
    ids = read_output(output).column("image_id").to_pylist()
    assert sorted(ids) == names  # every image exactly once: no duplicates, none missing
    assert summary.skipped == len(committed) and summary.ok == len(names) - len(committed)
    statuses = sorted(json.loads(p.read_text())["status"] for p in (output / "_sfp" / "runs").glob("*.json"))
    assert statuses == ["running", "succeeded"]  # the killed run never finished its manifest
    assert not (output / "_sfp" / "staging").exists()  # the dead run's staged files, the partial one too, are gone


def test_empty_and_missing_inputs(ray_local, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(InputHasNoImages, match=r"holds 1 other files \(1 \.txt\).*input.allow_empty"):
        run_label(str(tmp_path / "empty"), str(tmp_path / "out"), weights="random", **RUN)
    assert not (tmp_path / "out").exists()
    summary = run_label(str(tmp_path / "empty"), str(tmp_path / "out"), weights="random", allow_empty=True, **RUN)
    assert (summary.total, summary.ok, summary.error, summary.files) == (0, 0, 0, ())
    assert (tmp_path / "out" / "_sfp" / "runs" / f"{summary.run_id}.json").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_label(str(tmp_path / "nowhere"), str(tmp_path / "out"), weights="random", **RUN)


def test_incremental_runs_label_unreadable_files_again_and_keep_each_image_once(ray_local, image_corpus, tmp_path):
    """A file missing at read time (a dangling link: 'unreadable: FileNotFoundError') is a transient error:
    the next incremental run labels it again and its old row is gone; 'not an image' stays as it is."""
    root, expected = image_corpus
    names = sorted(n for n, (status, _) in expected.items() if status == "ok")[:3]
    source, output, later = tmp_path / "in", tmp_path / "out", tmp_path / "later"
    copy_images(root, names, source)
    later.mkdir()
    (source / "late.jpg").symlink_to(later / "late.jpg")  # dangling until the file arrives
    (source / "text.jpg").write_text("not an image")
    first = run_label(str(source), str(output), weights="random", mode="incremental", rows_per_file=2, **RUN)
    rows = {r["image_id"]: r for r in read_output(output).to_pylist()}
    assert rows["late.jpg"]["error"].startswith("unreadable: FileNotFoundError")
    assert rows["text.jpg"]["error"].startswith("not an image")

    shutil.copy(root / names[0], later / "late.jpg")
    second = run_label(str(source), str(output), weights="random", mode="incremental", **RUN)
    table = read_output(output)
    ids = table.column("image_id").to_pylist()
    assert sorted(ids) == sorted([*names, "late.jpg", "text.jpg"])  # one row each, the old one replaced
    rows = {r["image_id"]: r for r in table.to_pylist()}
    assert rows["late.jpg"]["status"] == "ok" and rows["late.jpg"]["run_id"] == second.run_id
    assert rows["text.jpg"]["run_id"] == first.run_id  # permanent: not labelled again
    assert (second.ok + second.error, second.skipped) == (1, 4)

    none = run_label(str(source), str(output), weights="random", mode="incremental", retry_errors="none", **RUN)
    assert none.ok + none.error == 0
    every = run_label(str(source), str(output), weights="random", mode="incremental", retry_errors="all", **RUN)
    assert every.ok + every.error == 1  # text.jpg, labelled again on request
    ids = read_output(output).column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(names) + 2


@pytest.mark.parametrize("stop_at", ["written", "flipped"])
def test_an_overwrite_killed_mid_commit_leaves_one_whole_version(ray_local, image_corpus, tmp_path, stop_at):
    """Killed with every file written but before the pointer flip, the old version stands and the next run
    deletes the new folder; killed after the flip (before the card), the new one stands and the card is
    repaired. Never a mix."""
    root, expected = image_corpus
    names = sorted(n for n, (status, _) in expected.items() if status == "ok")
    source, output = tmp_path / "in", tmp_path / "out"
    copy_images(root, names[:3], source)
    old = run_label(str(source), str(output), weights="random", mode="overwrite", rows_per_file=1, **RUN)
    shutil.rmtree(source)
    copy_images(root, names[3:6], source)
    driver = textwrap.dedent(
        f"""
        import os, signal
        import pipeline.output.commits
        from pipeline import Destination, LabelRequest, ModelChoice, Source, label
        from sfp_core import SFPConfig, Vocabulary

        def stop(step):
            if step == {stop_at!r}:
                os.kill(os.getpid(), signal.SIGKILL)

        pipeline.output.commits.commit_step_hook = stop
        label(LabelRequest(
            input=Source(uri={str(source)!r}),
            output=Destination(uri={str(output)!r}, mode="overwrite", rows_per_file=1),
            vocabulary=Vocabulary({[list(c) for c in VOCAB.classes]!r}),
            model=ModelChoice(arch={ARCH!r}, weights="random"),
            config=SFPConfig(short_side=224),
        ))
        """
    )
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    killed = subprocess.run([sys.executable, "-c", driver], env=env, capture_output=True, timeout=200)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-3000:]
    (killed_folder,) = [p.name for p in output.glob("data-*") if p.name != f"data-{old.run_id}"]
    killed_run = killed_folder.removeprefix("data-")
    card = (output / "README.md").read_text()
    assert f"path: data-{old.run_id}/*.parquet" in card  # the card is written after the flip
    flipped = stop_at == "flipped"
    winner, want = (killed_run, names[3:6]) if flipped else (old.run_id, names[:3])
    assert set(read_output(output).column("run_id").to_pylist()) == {winner}

    after = run_label(str(source), str(output), weights="random", mode="incremental", **RUN)
    table = read_output(output)
    assert set(table.column("run_id").to_pylist()) == ({winner} if flipped else {old.run_id, after.run_id})
    assert sorted(table.column("image_id").to_pylist()) == sorted(set(want) | set(names[3:6]))
    assert (output / killed_folder).is_dir() == flipped  # an unflipped folder is deleted by the next run
    assert f"path: data-{winner}/*.parquet" in (output / "README.md").read_text()
    assert not (output / "_sfp" / "staging").exists()


def test_foreign_files_in_the_output_are_refused_or_left_alone(ray_local, image_corpus, tmp_path):
    root, expected = image_corpus
    names = sorted(n for n, (status, _) in expected.items() if status == "ok")[:2]
    source, output = tmp_path / "in", tmp_path / "out"
    copy_images(root, names, source)
    precious = output / "other_dataset" / "year=2024" / "precious.parquet"
    precious.parent.mkdir(parents=True)
    precious.write_bytes(b"someone else's data")
    with pytest.raises(ForeignFilesInOutput, match=r"other_dataset/year=2024/precious\.parquet"):
        run_label(str(source), str(output), weights="random", mode="overwrite", **RUN)
    assert not (output / "_sfp").exists()  # refused before anything was written
    for _ in range(2):
        run_label(str(source), str(output), weights="random", mode="overwrite", allow_foreign_files=True, **RUN)
    assert precious.read_bytes() == b"someone else's data"  # overwrite deletes only what sfp-label wrote
