"""`sfp-label eval`: the scores against an independent per-class computation over the concatenated
pixels, every label-map format, and what happens to missing, broken or mismatched files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import NAMES, error_row, ok_row, write_output
from PIL import Image

import pipeline.output.reader
from jobs.cli import main
from jobs.tools.labelmaps import FORMATS, IGNORE, LabelMapError, gt_relative_path, to_class_indices


def save_label(path: Path, values: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8))
    if palette:  # as VOC ships them: palette PNGs whose indices are the labels
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)


def reference(gts: list[np.ndarray], preds: list[np.ndarray], classes: int) -> dict:
    """Per-class intersections and unions over the concatenated valid pixels, by set operations."""
    gt = np.concatenate([g.ravel() for g in gts])
    pred = np.concatenate([p.ravel() for p in preds])
    valid = gt != IGNORE
    iou, acc = [], []
    for c in range(classes):
        inter = np.sum((gt == c) & (pred == c) & valid)
        union = np.sum(((gt == c) | (pred == c)) & valid)
        labelled = np.sum((gt == c) & valid)
        iou.append(inter / union if union else None)
        acc.append(inter / labelled if labelled else None)
    present = [v for v in iou if v is not None]
    present_acc = [v for v in acc if v is not None]
    correct = np.sum((gt == pred) & valid)
    return {
        "iou": iou, "acc": acc, "mIoU": float(np.mean(present)), "mAcc": float(np.mean(present_acc)),
        "aAcc": correct / valid.sum(), "pixels": int(valid.sum()),
    }  # fmt: skip


def assert_close(got: float | None, want: float | None) -> None:
    assert (got is None) == (want is None), (got, want)
    if want is not None:
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), (got, want)


def run_eval(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def voc_like(tmp_path, monkeypatch):
    """Six images of several sizes in two Parquet files read two rows at a time; ignore pixels in the GT;
    class 2 only in the GT, class 3 only predicted, classes 4 and 5 on neither side."""
    monkeypatch.setattr(pipeline.output.reader, "BATCH_ROWS", 2)
    rng = np.random.default_rng(5)
    gts, preds, rows = [], [], []
    for i in range(6):
        shape = (17 + 5 * i, 23 + 3 * i)
        gt = rng.choice([0, 1, 2], size=shape, p=[0.5, 0.3, 0.2]).astype(np.uint8)
        pred = np.where(rng.random(shape) < 0.6, np.minimum(gt, 1), rng.choice([0, 1, 3], size=shape)).astype(np.uint8)
        gt[rng.random(shape) < 0.15] = IGNORE  # boundaries
        gt[:2, :] = IGNORE
        pred[:2, :] = 3  # predictions on ignored pixels never count
        save_label(tmp_path / "gt" / f"{i:04d}.png", gt, palette=i % 2 == 0)
        gts.append(gt)
        preds.append(pred)
        rows.append(ok_row(f"{i:04d}.jpg", pred))
    output = write_output(tmp_path / "out", [rows[:4], rows[4:]])
    return output, tmp_path / "gt", gts, preds


def test_scores_match_an_independent_computation_over_all_pixels(voc_like, tmp_path, capsys):
    output, gt_dir, gts, preds = voc_like
    code, out, err = run_eval(capsys, str(output), "--gt", str(gt_dir), "--out", str(tmp_path / "scores"))
    assert code == 0, err
    want = reference(gts, preds, len(NAMES))
    metrics = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    for key in ("mIoU", "mAcc", "aAcc"):
        assert_close(metrics[key], want[key])
    for row in metrics["per_class"]:
        assert_close(row["iou"], want["iou"][row["id"]])
        assert_close(row["acc"], want["acc"][row["id"]])
    assert [row["name"] for row in metrics["per_class"]] == NAMES
    assert (metrics["images"], metrics["pixels"], metrics["missing_gt"], metrics["skipped_error_rows"]) == (
        6, want["pixels"], 0, 0,
    )  # fmt: skip
    assert want["iou"][2] == 0.0 and want["acc"][3] is None and want["iou"][4] is want["iou"][5] is None
    with (tmp_path / "scores" / "per_class.csv").open() as stream:
        table = list(csv.DictReader(stream))
    assert [r["name"] for r in table] == NAMES
    for r, row in zip(table, metrics["per_class"], strict=True):
        assert_close(float(r["iou"]) if r["iou"] else None, row["iou"])
        assert int(r["gt_pixels"]) == row["gt_pixels"]
    assert f"mIoU {100 * want['mIoU']:.2f}" in out and "boat" in out


def test_missing_label_files_and_error_rows_are_reported_not_dropped(voc_like, tmp_path, capsys):
    output, gt_dir, gts, preds = voc_like
    (gt_dir / "0005.png").unlink()
    extra = write_output(tmp_path / "more", [[error_row("broken.jpg")]], class_names=None)
    (output / "data-run1" / "part-9.parquet").write_bytes((extra / "data-run1" / "part-0.parquet").read_bytes())
    code, out, err = run_eval(capsys, str(output), "--gt", str(gt_dir), "--out", str(tmp_path / "scores"))
    assert code == 0, err
    metrics = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    assert (metrics["images"], metrics["missing_gt"], metrics["skipped_error_rows"]) == (5, 1, 1)
    assert metrics["missing_gt_examples"] == [str(gt_dir / "0005.png")]
    assert_close(metrics["mIoU"], reference(gts[:5], preds[:5], len(NAMES))["mIoU"])
    assert "1 ok images have no ground truth" in out and "skipped 1 error rows" in out


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("prediction", "predicted class 9 is outside the vocabulary's 6 classes"),
        ("size", "mask is 23x17 but"),
        ("colour", "a RGB image, not a label map"),
        ("value", "values [7] are not labels of voc with 6 classes"),
        ("nothing", "nothing to score: none of the 6 ok images has a label file"),
    ],
)
def test_data_that_cannot_be_compared_is_an_error_naming_the_file(voc_like, tmp_path, capsys, damage, message):
    output, gt_dir, _, preds = voc_like
    first = gt_dir / "0000.png"
    if damage == "prediction":
        preds[0][5, 5] = 9
        write_output(tmp_path / "bad", [[ok_row("0000.jpg", preds[0])]])
        output = tmp_path / "bad"
    elif damage == "size":
        save_label(first, np.zeros((18, 23)))
    elif damage == "colour":
        Image.new("RGB", (23, 17)).save(first)
    elif damage == "value":
        save_label(first, np.full((17, 23), 7))
    else:
        for path in gt_dir.iterdir():
            path.unlink()
    code, _, err = run_eval(capsys, str(output), "--gt", str(gt_dir), "--out", str(tmp_path / "scores"))
    assert code == 2 and message in err, err
    assert not (tmp_path / "scores").exists()


def test_class_names_come_from_the_vocab_file_which_must_match_the_run(voc_like, tmp_path, capsys):
    output, gt_dir, _, _ = voc_like
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("bg, sky\nkitten\npuppy\nauto\nplant\nship\n")
    code, _, err = run_eval(capsys, str(output), "--gt", str(gt_dir), "--vocab", str(vocab), "--out", str(tmp_path))
    assert code == 0, err
    assert [r["name"] for r in json.loads((tmp_path / "metrics.json").read_text())["per_class"]][:2] == ["bg", "kitten"]
    vocab.write_text("bg\nkitten\n")
    code, _, err = run_eval(capsys, str(output), "--gt", str(gt_dir), "--vocab", str(vocab), "--out", str(tmp_path))
    assert code == 2 and "has 2 classes but" in err and "labelled with 6" in err


def test_label_files_sit_beside_the_image_path_with_the_format_suffix():
    assert gt_relative_path("2007_000033.jpg", FORMATS["voc"].suffix) == "2007_000033.png"
    assert gt_relative_path("validation/ADE_val_00000001.jpg", ".png") == "validation/ADE_val_00000001.png"
    city = "frankfurt/frankfurt_000000_000294"
    assert gt_relative_path(f"{city}_leftImg8bit.png", FORMATS["cityscapes"].suffix) == f"{city}_gtFine_labelIds.png"
    assert gt_relative_path("val2017/000000000139.jpg", FORMATS["trainids"].suffix) == (
        "val2017/000000000139_labelTrainIds.png"
    )


def test_ade20k_drops_other_and_shifts_classes_down():
    stored = np.array([[0, 1, 2], [150, 255, 75]])
    assert to_class_indices(stored, FORMATS["ade20k"], 150, "x").tolist() == [[255, 0, 1], [149, 255, 74]]
    with pytest.raises(LabelMapError, match=r"values \[151\]"):
        to_class_indices(np.array([[151]]), FORMATS["ade20k"], 150, "x")


def test_cityscapes_label_ids_become_the_19_train_ids():
    ids = np.arange(34)
    mapped = to_class_indices(ids, FORMATS["cityscapes"], 19, "x")
    label_ids = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]  # cityscapesScripts
    train = {label_id: train_id for train_id, label_id in enumerate(label_ids)}
    assert mapped.tolist() == [train.get(i, 255) for i in range(34)]
    with pytest.raises(LabelMapError):
        to_class_indices(np.array([40]), FORMATS["cityscapes"], 19, "x")


def test_coco_stuff_raw_ids_become_171_contiguous_classes():
    raw = np.arange(256)
    unused = [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90]
    valid = np.array([i for i in range(182) if i not in unused] + [255])
    mapped = to_class_indices(valid, FORMATS["coco_stuff"], 171, "x")
    assert mapped[:-1].tolist() == list(range(171)) and mapped[-1] == 255
    # pairs from mmsegmentation's tools/dataset_converters/coco_stuff164k.py
    for stored, index in {10: 10, 12: 11, 26: 24, 27: 25, 30: 26, 45: 40, 66: 60, 69: 61, 91: 80, 181: 170}.items():
        assert to_class_indices(np.array([stored]), FORMATS["coco_stuff"], 171, "x")[0] == index
    for bad in [*unused, 182, 254]:
        with pytest.raises(LabelMapError):
            to_class_indices(raw[bad : bad + 1], FORMATS["coco_stuff"], 171, "x")


@pytest.mark.parametrize("name", ["ade20k", "cityscapes", "coco_stuff", "trainids"])
def test_each_format_end_to_end(name, tmp_path, capsys):
    """Train-id labels stored the way each dataset stores them, scored against the same labels mapped back."""
    fmt = FORMATS[name]
    classes = fmt.classes or 19
    pairs = fmt.table or tuple((i, i) for i in range(classes))
    stored_of = {index: stored for stored, index in reversed(pairs)}  # the first stored value of each class
    stored_of[IGNORE] = 0 if name in ("ade20k", "cityscapes") else IGNORE  # "other" / "unlabeled" where they exist
    rng = np.random.default_rng(11)
    folder = "frankfurt" if name == "cityscapes" else "val"
    image_id = f"{folder}/{folder}_000001_leftImg8bit.png" if name == "cityscapes" else f"{folder}/img1.jpg"
    train = rng.integers(0, classes, size=(20, 30))
    train[rng.random(train.shape) < 0.2] = IGNORE
    pred = np.where(rng.random(train.shape) < 0.7, train % classes, rng.integers(0, classes, train.shape))
    pred = np.where(train == IGNORE, 0, pred).astype(np.uint8)
    save_label(tmp_path / "gt" / gt_relative_path(image_id, fmt.suffix), np.vectorize(stored_of.get)(train))
    names = [f"class{i}" for i in range(classes)]
    output = write_output(tmp_path / "out", [[ok_row(image_id, pred)]], names)
    code, _, err = run_eval(
        capsys, str(output), "--gt", str(tmp_path / "gt"), "--gt-format", name, "--out", str(tmp_path / "s")
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    want = reference([train], [pred], classes)
    assert_close(metrics["mIoU"], want["mIoU"])
    assert metrics["pixels"] == want["pixels"]


def test_a_format_with_a_fixed_class_count_refuses_another_vocabulary(voc_like, tmp_path, capsys):
    output, gt_dir, _, _ = voc_like
    code, _, err = run_eval(capsys, str(output), "--gt", str(gt_dir), "--gt-format", "cityscapes")
    assert code == 2 and "cityscapes labels have 19 classes but the vocabulary has 6" in err


def test_output_and_ground_truth_in_object_storage(s3_server, voc_like, tmp_path, capsys):
    """Both read through fsspec with the same -o options; credentials come from the environment."""
    output, gt_dir, gts, preds = voc_like
    s3_server.create_bucket("sfp-eval")
    fs = s3_server.filesystem()
    for local, prefix in ((output, "sfp-eval/labels"), (gt_dir, "sfp-eval/gt")):
        for path in local.rglob("*"):
            if path.is_file():
                with fs.open_output_stream(f"{prefix}/{path.relative_to(local).as_posix()}") as stream:
                    stream.write(path.read_bytes())
    where = [f"--storage-option={key}={value}" for key, value in s3_server.storage_options.items()]
    code, _, err = run_eval(
        capsys, "s3://sfp-eval/labels", "--gt", "s3://sfp-eval/gt", *where, "--out", str(tmp_path / "s3")
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "s3" / "metrics.json").read_text())
    assert_close(metrics["mIoU"], reference(gts, preds, len(NAMES))["mIoU"])
    assert (metrics["images"], metrics["gt"]) == (6, "s3://sfp-eval/gt")
