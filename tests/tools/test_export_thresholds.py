"""Per-class confidence thresholds (`--ignore-below-class`, `read_labels(ignore_below_class=...)`): what is
ignored is checked against a numpy computation on the stored mask and confidence PNGs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from test_cli_output import CLASSES, cli, ok_row, write_output

DEFAULT, PER_CLASS = 0.5, {"cat": 0.7, "dog": 0.3}  # x 255: 127.5, 178.5, 76.5, never equal to a stored value
SHAPES = {"a.jpg": (20, 30), "sub/b.png": (17, 11), "c.jpg": (9, 40)}


@pytest.fixture
def stored(tmp_path) -> tuple:
    """An output of random masks and confidences, and the arrays as stored, by image id."""
    rng = np.random.default_rng(22)
    arrays = {
        image_id: (rng.integers(0, 3, shape).astype(np.uint8), rng.integers(0, 256, shape).astype(np.uint8))
        for image_id, shape in SHAPES.items()
    }
    rows = [ok_row(image_id, mask, confidence, []) for image_id, (mask, confidence) in arrays.items()]
    return write_output(tmp_path / "out", rows), arrays


def expected_ignored(mask: np.ndarray, confidence: np.ndarray, default: float, per_class: dict) -> np.ndarray:
    """Here, independently: each pixel's threshold from its class's display name, compared in float64."""
    names = [names[0] for names in CLASSES]
    threshold = np.array([per_class.get(name, default) for name in names])[mask]
    return confidence.astype(np.float64) < threshold * 255


def class_counts(arrays: dict, default: float, per_class: dict) -> dict[int, tuple[int, int]]:
    counts: dict[int, tuple[int, int]] = {}
    for mask, confidence in arrays.values():
        ignored = expected_ignored(mask, confidence, default, per_class)
        for value in range(len(CLASSES)):
            before = counts.get(value, (0, 0))
            counts[value] = (before[0] + int((ignored & (mask == value)).sum()), before[1] + int((mask == value).sum()))
    return counts


def reported(stdout: str) -> dict[int, tuple[int, int]]:
    found = re.findall(r"^  class (\d+) \S+: (\d+) of (\d+) pixels", stdout, re.MULTILINE)
    return {int(value): (int(ignored), int(pixels)) for value, ignored, pixels in found}


def threshold_args() -> list[str]:
    return ["--ignore-below", str(DEFAULT), *(f"--ignore-below-class={n}={t}" for n, t in PER_CLASS.items())]


def test_ignored_share_per_class_equals_numpy_on_the_stored_confidence(stored, tmp_path):
    output, arrays = stored
    result = cli("export", str(output), str(tmp_path / "voc"), *threshold_args())
    assert result.returncode == 0, result.stderr
    counts = class_counts(arrays, DEFAULT, PER_CLASS)
    assert reported(result.stdout) == counts
    assert counts[1][0] / counts[1][1] > counts[0][0] / counts[0][1] > counts[2][0] / counts[2][1]  # 0.7 > 0.5 > 0.3
    for value, name, threshold in ((0, "background", "0.5"), (1, "cat", "0.7"), (2, "dog", "0.3")):
        ignored, pixels = counts[value]
        assert f"class {value} {name}: {ignored} of {pixels} pixels ({ignored / pixels:.1%}) ignored, below " \
               f"{threshold}" in result.stdout  # fmt: skip
    total = sum(ignored for ignored, _ in counts.values())
    assert f"{total} pixels ({total / sum(p for _, p in counts.values()):.1%}) set to ignore" in result.stdout
    for image_id, (mask, confidence) in arrays.items():
        stem = image_id.rsplit(".", 1)[0]
        exported = np.array(Image.open(tmp_path / "voc" / "SegmentationClass" / f"{stem}.png"))
        np.testing.assert_array_equal(
            exported, np.where(expected_ignored(mask, confidence, DEFAULT, PER_CLASS), 255, mask)
        )


def test_coco_leaves_out_the_pixels_below_their_class_threshold(stored, tmp_path):
    output, arrays = stored
    result = cli("export", str(output), str(tmp_path / "coco.json"), "--format", "coco", *threshold_args())
    assert result.returncode == 0, result.stderr
    assert reported(result.stdout) == class_counts(arrays, DEFAULT, PER_CLASS)
    coco = json.loads((tmp_path / "coco.json").read_text())
    files = {image["id"]: image["file_name"] for image in coco["images"]}
    seen = set()
    for annotation in coco["annotations"]:
        mask, confidence = arrays[files[annotation["image_id"]]]
        value = annotation["category_id"] - 1
        kept = (mask == value) & ~expected_ignored(mask, confidence, DEFAULT, PER_CLASS)
        segmentation = {**annotation["segmentation"], "counts": annotation["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(coco_mask.decode(segmentation).astype(bool), kept)
        seen.add((files[annotation["image_id"]], value))
    assert seen == {(image_id, value) for image_id in arrays for value in range(3)}


def test_read_labels_sets_pixels_below_their_class_threshold_to_the_ignore_index(stored):
    from pipeline import read_labels
    from pipeline.output.reader import ThresholdError

    output, arrays = stored
    for default, per_class in ((DEFAULT, PER_CLASS), (None, {"cat": 0.9})):  # no default: only cat's pixels
        images = list(read_labels(str(output), ignore_below=default, ignore_below_class=per_class, ignore_index=7))
        assert {image.image_id for image in images} == set(arrays)
        for image in images:
            mask, confidence = arrays[image.image_id]
            ignored = expected_ignored(mask, confidence, default or 0.0, per_class)
            assert ignored.any() and not ignored.all()
            np.testing.assert_array_equal(image.mask, np.where(ignored, 7, mask))
            assert image.confidence is None and image.class_ids == [0, 1, 2]  # as stored
    plain = {image.image_id: image.mask for image in read_labels(str(output))}
    np.testing.assert_array_equal(plain["a.jpg"], arrays["a.jpg"][0])
    with pytest.raises(ThresholdError, match=r"'sky' names no class.*background, cat, dog"):
        next(read_labels(str(output), ignore_below_class={"sky": 0.5}))  # a synonym, not a display name
    with pytest.raises(ThresholdError, match="not a probability"):
        next(read_labels(str(output), ignore_below_class={"cat": 70}))


@pytest.mark.parametrize(
    ("option", "words"),
    [("--ignore-below-class=persn=0.7", "'persn' names no class to threshold; the classes are: background, cat, dog"),
     ("--ignore-below-class=cat", "is not NAME=P"), ("--ignore-below-class=cat=1.2", "not a probability")],
)  # fmt: skip
def test_a_bad_class_threshold_is_exit_2_and_names_the_classes(stored, tmp_path, option, words):
    output, _ = stored
    result = cli("export", str(output), str(tmp_path / "voc"), option)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert not (tmp_path / "voc" / "SegmentationClass").exists()
