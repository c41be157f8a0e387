"""`sfp-label show` and `export` through the real entry point (and what `render` and `eval` refuse), and
`read_labels`, on outputs written here with pyarrow."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import SCHEMA

SFP_LABEL = str(Path(sys.executable).parent / "sfp-label")
CLASSES = [["background", "sky"], ["cat"], ["dog"]]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([SFP_LABEL, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def outlier(row: int, col: int, score: float) -> dict:
    return {"window": 0, "window_y": 0, "window_x": 0, "row": row, "col": col, "score": score,
            "x0": 0, "y0": 0, "x1": 16, "y1": 16}  # fmt: skip


def ok_row(image_id: str, mask: np.ndarray, confidence: np.ndarray | None, outliers: list[dict]) -> dict:
    ids, areas = np.unique(mask, return_counts=True)
    return {
        "image_id": image_id, "uri": f"file:///data/{image_id}", "status": "ok", "error": None,
        "width": mask.shape[1], "height": mask.shape[0], "mask_png": png(mask),
        "class_ids": ids.tolist(), "class_pixels": areas.tolist(),
        "mean_confidence": float(confidence.mean() / 255) if confidence is not None else 0.5,
        "confidence_png": png(confidence) if confidence is not None else None,
        "outlier_count": len(outliers), "outlier_ratio": 0.1, "score_min": None, "score_mean": None,
        "score_max": None, "windows": 1, "outliers": outliers, "model": "SFP-Tiny-16:random",
        "config_hash": "abc", "run_id": "run-1",
    }  # fmt: skip


def error_row(image_id: str, error: str) -> dict:
    return {name: None for name in SCHEMA.names} | {
        "image_id": image_id, "uri": f"file:///data/{image_id}", "status": "error", "error": error,
        "outlier_count": 0, "model": "SFP-Tiny-16:random", "config_hash": "abc", "run_id": "run-1",
    }  # fmt: skip


def write_output(root: Path, rows: list[dict], classes: list[list[str]] = CLASSES) -> Path:
    """An output as the pipeline commits it: a data folder and the pointer naming it, a manifest, staging
    that is not data, and an older data folder no pointer names."""
    (root / "_sfp" / "runs").mkdir(parents=True)
    (root / "_sfp" / "staging").mkdir()
    (root / "data-run-1").mkdir()
    (root / "data-run-0").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:2], schema=SCHEMA), root / "data-run-1" / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:], schema=SCHEMA), root / "data-run-1" / "part-1.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1], schema=SCHEMA), root / "data-run-0" / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1], schema=SCHEMA), root / "_sfp" / "staging" / "half-written.parquet")
    identity = {"arch": "SFP-Tiny-16", "weights": "random", "classes": classes}
    (root / "_sfp" / "current.json").write_text(
        json.dumps({"data": "data-run-1", "identity": identity, "created_by": "run-1"})
    )
    manifest = {
        "run_id": "run-1", "status": "succeeded", "started_at": "2026-01-01T00:00:00Z",
        "vocabulary": {"classes": classes}, "model": {"arch": "SFP-Tiny-16", "weights": "random"},
        "counts": {"ok": 2, "error": 1, "skipped": 0, "total": 3}, "images_per_second": 2.5, "config_hash": "abc",
    }  # fmt: skip
    (root / "_sfp" / "runs" / "run-1.json").write_text(json.dumps(manifest))
    return root


MASK_A = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 0, 0]], np.uint8)
CONF_A = np.array([[255, 200, 100, 30], [255, 200, 100, 30], [255, 255, 255, 0]], np.uint8)
MASK_B = np.full((2, 3), 1, np.uint8)
CONF_B = np.full((2, 3), 250, np.uint8)


@pytest.fixture
def output(tmp_path) -> Path:
    rows = [
        ok_row("a.jpg", MASK_A, CONF_A, [outlier(3, 4, 2.0), outlier(3, 4, 4.0), outlier(0, 1, 6.0)]),
        ok_row("sub/b.png", MASK_B, CONF_B, [outlier(3, 4, 3.0)]),
        error_row("broken.jpg", "not an image: cannot identify image file"),
    ]
    return write_output(tmp_path / "out", rows)


def test_show_text(output):
    result = cli("show", str(output))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "3 images, 2 ok, 1 error" in text
    assert "not an image: cannot identify image file" in text
    assert "classes present: 3 of 3" in text and "cat" in text and "dog" in text
    assert "outliers: 4 in 2 images" in text
    assert "(3,4) x3" in text
    assert "run-1" in text and "succeeded" in text


def test_show_json(output):
    result = cli("show", str(output), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["images"], summary["ok"], summary["error"]) == (3, 2, 1)  # staging rows are not counted
    classes = {c["name"]: c for c in summary["classes"]}
    assert classes["background"]["pixel_share"] == pytest.approx(8 / 18)
    assert classes["cat"]["pixel_share"] == pytest.approx(6 / 18) and classes["cat"]["images"] == 1
    assert classes["dog"]["images"] == 1
    outliers = summary["outliers"]
    assert outliers["total"] == 4 and outliers["images_with_outliers"] == 2
    assert outliers["score_mean"] == pytest.approx(15 / 4) and outliers["score_max"] == pytest.approx(6.0)
    assert outliers["top_positions"][0] == {"row": 3, "col": 4, "count": 3}
    assert outliers["per_image"]["max"] == 3
    assert summary["runs"][0]["ok"] == 2


def test_export_writes_the_voc_layout(output, tmp_path):
    target = tmp_path / "voc"
    result = cli("export", str(output), str(target))
    assert result.returncode == 0, result.stderr
    assert "exported 2 masks" in result.stdout and "1 error rows skipped" in result.stdout
    assert (target / "ImageSets" / "Segmentation" / "train.txt").read_text() == "a\nsub/b\n"
    assert (target / "classes.txt").read_text() == "background\ncat\ndog\n"
    np.testing.assert_array_equal(np.array(Image.open(target / "SegmentationClass" / "a.png")), MASK_A)
    np.testing.assert_array_equal(np.array(Image.open(target / "SegmentationClass" / "sub" / "b.png")), MASK_B)


def test_export_ignores_low_confidence_pixels(output, tmp_path):
    target = tmp_path / "voc"
    result = cli("export", str(output), str(target), "--ignore-below", "0.5", "--split", "pseudo")
    assert result.returncode == 0, result.stderr
    expected = np.where(CONF_A < 127.5, 255, MASK_A)
    np.testing.assert_array_equal(np.array(Image.open(target / "SegmentationClass" / "a.png")), expected)
    np.testing.assert_array_equal(np.array(Image.open(target / "SegmentationClass" / "sub" / "b.png")), MASK_B)
    low = int((CONF_A < 127.5).sum())
    assert f"{low} pixels ({low / (CONF_A.size + CONF_B.size):.1%}) set to ignore" in result.stdout
    assert (target / "ImageSets" / "Segmentation" / "pseudo.txt").exists()


def test_export_refusals(tmp_path, output):
    no_confidence = write_output(tmp_path / "noconf", [ok_row("a.jpg", MASK_A, None, [])])
    result = cli("export", str(no_confidence), str(tmp_path / "x"), "--ignore-below", "0.5")
    assert result.returncode == 2 and "output.confidence: true" in result.stderr
    result = cli("export", str(output), str(tmp_path / "x"), "--ignore-below", "0.5", "--ignore-index", "2")
    assert result.returncode == 2 and "ignore index 2 must lie in 3..255" in result.stderr
    result = cli("export", str(output), str(tmp_path / "x"), "--ignore-below", "1.5")
    assert result.returncode == 2 and "not a probability" in result.stderr


def test_export_sixteen_bit_masks(tmp_path):
    classes = [[f"class{i}"] for i in range(300)]
    mask = np.array([[0, 299], [256, 1]], np.uint16)
    confidence = np.array([[10, 200], [200, 200]], np.uint8)
    output = write_output(tmp_path / "big", [ok_row("big.jpg", mask, confidence, [])], classes)
    result = cli("export", str(output), str(tmp_path / "x"), "--ignore-below", "0.5")
    assert result.returncode == 2 and "300..65535" in result.stderr
    result = cli("export", str(output), str(tmp_path / "x"), "--ignore-below", "0.5", "--ignore-index", "65535")
    assert result.returncode == 0, result.stderr
    exported = np.array(Image.open(tmp_path / "x" / "SegmentationClass" / "big.png"))
    np.testing.assert_array_equal(exported, [[65535, 299], [256, 1]])


def test_show_refusals(tmp_path):
    result = cli("show", str(tmp_path / "nothing-here"))
    assert result.returncode == 2 and "no such output folder" in result.stderr
    result = cli("show", "s3://bucket/out", "-o", "secret=hunter2hunter2")
    assert result.returncode == 2 and "credentials" in result.stderr and "hunter2hunter2" not in result.stderr


def test_export_never_writes_outside_its_folder(tmp_path):
    """Ids are data: an absolute id, `..` or a newline cannot name a file outside the export folder."""
    mask = np.zeros((2, 2), np.uint8)
    hostile = ["/tmp/sfp-export-escape.jpg", "../../escape.jpg", "a/../../b.jpg", "nl\nx.jpg", "./dot.jpg"]
    rows = [ok_row(image_id, mask, None, []) for image_id in [*hostile, "fine/ok.jpg"]]
    root = tmp_path / "nest" / "out"
    write_output(root, rows)
    export_dir = tmp_path / "nest" / "export"
    result = cli("export", str(root), str(export_dir))
    assert result.returncode == 0, result.stderr
    assert "5 images skipped whose ids would leave the folder" in result.stdout
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png"))
    assert written == ["nest/export/SegmentationClass/fine/ok.png"]
    assert not Path("/tmp/sfp-export-escape.png").exists()
    assert (export_dir / "ImageSets" / "Segmentation" / "train.txt").read_text() == "fine/ok\n"


@pytest.mark.parametrize("link", ["ImageSets", "ImageSets/Segmentation", "classes.txt", "SegmentationClass"])
def test_export_never_writes_through_a_symlink_in_the_destination(tmp_path, link):
    mask = np.zeros((2, 2), np.uint8)
    root = write_output(tmp_path / "out", [ok_row("a.jpg", mask, None, [])])
    export_dir, elsewhere = tmp_path / "export", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (export_dir / link).parent.mkdir(parents=True, exist_ok=True)
    target = elsewhere / "classes.txt" if link == "classes.txt" else elsewhere
    (export_dir / link).symlink_to(target)
    result = cli("export", str(root), str(export_dir))
    assert result.returncode == 2 and "symbolic link" in result.stderr, result.stderr
    assert list(elsewhere.iterdir()) == []  # no folder, split file, class list or mask made there


def test_export_refuses_class_names_that_span_lines(tmp_path):
    mask = np.zeros((2, 2), np.uint8)
    root = write_output(tmp_path / "out", [ok_row("a.jpg", mask, None, [])], [["sky"], ["cat\ndog"], ["car"]])
    result = cli("export", str(root), str(tmp_path / "export"))
    assert result.returncode == 2 and "spans lines" in result.stderr, result.stderr
    assert not (tmp_path / "export" / "classes.txt").exists()


def test_show_calls_a_running_run_without_the_lease_abandoned(tmp_path):
    mask = np.zeros((2, 2), np.uint8)
    root = write_output(tmp_path / "out", [ok_row(f"{i}.jpg", mask, None, []) for i in range(3)])
    dead = {"run_id": "run-2", "status": "running", "started_at": "2026-01-02T00:00:00Z"}
    (root / "_sfp" / "runs" / "run-2.json").write_text(json.dumps(dead))
    result = cli("show", str(root), "--json")
    assert result.returncode == 0, result.stderr
    statuses = {run["run_id"]: run["status"] for run in json.loads(result.stdout)["runs"]}
    assert statuses == {"run-1": "succeeded", "run-2": "abandoned"}


def test_export_says_how_much_it_ignored_and_warns_past_half(output, tmp_path):
    """CONF_A and CONF_B: 18 pixels; below 0.99 x 255: 8 of A's 12 and all 6 of B's."""
    low = int((CONF_A < 0.99 * 255).sum()) + int((CONF_B < 0.99 * 255).sum())
    result = cli("export", str(output), str(tmp_path / "voc"), "--ignore-below", "0.99")
    assert result.returncode == 0, result.stderr
    assert f"{low} pixels ({low / 18:.1%}) set to ignore" in result.stdout
    assert "warning" in result.stderr and f"{low / 18:.0%} of the pixels" in result.stderr
    quiet = cli("export", str(output), str(tmp_path / "voc2"), "--ignore-below", "0.5")
    assert "warning" not in quiet.stderr


def test_show_lists_error_rows_and_failed_runs_and_survives_a_closed_pipe(output, tmp_path):
    errors = cli("show", str(output), "--errors")
    assert errors.returncode == 0 and errors.stdout == "broken.jpg\tnot an image: cannot identify image file\n"
    failed = {
        "run_id": "run-3",
        "status": "failed",
        "started_at": "2026-01-03T00:00:00Z",
        "error": "OSError: disk full",
    }
    empty = {"run_id": "run-4", "status": "succeeded", "started_at": "2026-01-04T00:00:00Z",
             "counts": {"ok": 0, "error": 0, "skipped": 0, "total": 0}}  # fmt: skip
    for record in (failed, empty):
        (output / "_sfp" / "runs" / f"{record['run_id']}.json").write_text(json.dumps(record))
    text = cli("show", str(output)).stdout
    assert "run-3  failed" in text and "OSError: disk full" in text and "ok None" not in text
    assert "run-4  succeeded" in text and "found no images" in text
    many = write_output(tmp_path / "many", [error_row(f"{i:05d}.jpg", "truncated: x") for i in range(20000)])
    piped = subprocess.run(  # head leaves after one line; show meets a closed pipe with most still to print
        f"{SFP_LABEL} show {many} --errors | head -1", shell=True, capture_output=True, text=True, timeout=120
    )
    assert piped.stdout == "00000.jpg\ttruncated: x\n"
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr, piped.stderr


@pytest.mark.parametrize(
    ("pointer", "words"),
    [
        ('{"data": "../../etc", "identity": {"arch": "a", "weights": "w"}, "created_by": "x"}', "not a data folder"),
        ("{not json", "Invalid JSON"),
    ],
)
def test_a_damaged_pointer_is_refused_in_two_lines(output, pointer, words):
    (output / "_sfp" / "current.json").write_text(pointer)
    result = cli("show", str(output))
    assert result.returncode == 2 and "current.json is damaged" in result.stderr and words in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2


def assert_one_or_two_lines(result: subprocess.CompletedProcess) -> None:
    """A user mistake: exit 2 and one or two lines naming it, never a traceback (docs/design.md, "Errors")."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and 1 <= len(lines) <= 2 and "Traceback" not in result.stderr, result.stderr


def test_show_refuses_a_folder_that_is_not_an_output(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"not ours")
    result = cli("show", str(tmp_path / "photos"))
    assert_one_or_two_lines(result)
    assert "not an sfp-label output" in result.stderr and str(tmp_path / "photos") in result.stderr
    assert result.stdout == ""


def test_show_errors_says_when_there_are_none(tmp_path):
    root = write_output(tmp_path / "out", [ok_row("a.jpg", MASK_A, None, [])])
    result = cli("show", str(root), "--errors")
    assert result.returncode == 0 and result.stdout == ""  # stdout stays the (empty) list, for scripts
    assert result.stderr.strip() == f"{root}: no error rows"


@pytest.mark.parametrize(
    "args",
    [
        ["export", "{out}", "{file}"],
        ["export", "{out}", "{file}", "--format", "coco"],
        ["export", "{out}", "{file}", "--format", "yolo"],
        ["render", "{out}", "{file}"],
        ["eval", "{out}", "--gt", "{gt}", "--out", "{file}"],
    ],
    ids=["voc", "coco", "yolo", "render", "eval"],
)
def test_writing_into_an_existing_file_is_refused_in_one_line(output, tmp_path, args):
    (tmp_path / "gt").mkdir()
    occupied = tmp_path / "occupied"
    occupied.write_text("keep me\n")
    result = cli(*(arg.format(out=output, file=occupied, gt=tmp_path / "gt") for arg in args))
    assert_one_or_two_lines(result)
    assert str(occupied) in result.stderr and "not a folder" in result.stderr
    assert occupied.read_text() == "keep me\n"


def test_read_labels_names_the_classes_present_and_gives_the_whole_vocabulary(output):
    from pipeline import read_labels

    images = {image.image_id: image for image in read_labels(str(output))}
    a = images["a.jpg"]
    assert a.class_ids == [0, 2] and a.class_names == ["background", "dog"]  # pairwise with class_ids
    assert a.all_class_names == ("background", "cat", "dog")  # index = mask value
    assert [a.all_class_names[value] for value in a.mask[0]] == ["background", "background", "dog", "dog"]
    assert images["sub/b.png"].all_class_names is a.all_class_names
