"""`sfp-label export --format yolo`: the polygons are read back, rasterised with Pillow (not OpenCV) in
Ultralytics' order (larger first, smaller over them) and compared with the stored masks, whose regions are
found here with scipy."""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw
from scipy import ndimage
from test_cli_output import cli, ok_row, write_output

MIN_AREA = 12
EIGHT = np.ones((3, 3), bool)


def scene() -> np.ndarray:
    """Background; a cat disc holding a dog square; a dog ring around background; dog specks of 4 and 9 px."""
    yy, xx = np.mgrid[:60, :80]
    mask = np.zeros((60, 80), np.uint8)
    mask[(yy - 25) ** 2 + (xx - 22) ** 2 <= 15**2] = 1
    mask[20:30, 18:28] = 2
    ring = (yy - 30) ** 2 + (xx - 60) ** 2
    mask[(ring <= 12**2) & (ring >= 6**2)] = 2
    mask[50:52, 5:7] = 2
    mask[52:55, 30:33] = 2
    return mask


def blobs(seed: int) -> np.ndarray:
    """Three classes in smooth random blobs: regions of every size, tiny ones included."""
    rng = np.random.default_rng(seed)
    fields = [ndimage.gaussian_filter(rng.normal(size=(96, 128)), 4) for _ in range(3)]
    return np.argmax(fields, axis=0).astype(np.uint8)


def regions_kept(mask: np.ndarray, value: int) -> tuple[np.ndarray, int]:
    """Pixels of the 8-connected regions of `value` with at least MIN_AREA pixels, and how many regions."""
    labels, count = ndimage.label(mask == value, structure=EIGHT)
    sizes = np.bincount(labels.ravel())
    big = [region for region in range(1, count + 1) if sizes[region] >= MIN_AREA]
    return np.isin(labels, big), len(big)


def read_polygons(path, shape) -> list[tuple[int, list[tuple[int, int]]]]:
    height, width = shape
    polygons = []
    for line in path.read_text().splitlines():
        value, *coords = line.split()
        xy = np.round(np.array(coords, float).reshape(-1, 2) * (width, height)).astype(int)
        assert ((xy >= 0) & (xy <= (width - 1, height - 1))).all()  # pixel indices, as OpenCV's contours
        polygons.append((int(value), [tuple(p) for p in xy.tolist()]))
    return polygons


def rasterise(polygons, shape) -> np.ndarray:
    """Larger polygons first, as Ultralytics composes them (overlap_mask): a region inside another's hole wins."""

    def area(points):
        x, y = np.array(points, float).T
        return abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2

    image = Image.new("L", shape[::-1], 255)
    draw = ImageDraw.Draw(image)
    for value, points in sorted(polygons, key=lambda polygon: -area(polygon[1])):
        draw.polygon(points, fill=value, outline=value)
    return np.array(image)


@pytest.fixture
def exported(tmp_path):
    inputs = tmp_path / "inputs"
    (inputs / "sub").mkdir(parents=True)
    masks = {"scene.jpg": scene(), "sub/blobs.png": blobs(4), "remote.jpg": blobs(5)}
    rows = []
    for image_id, mask in masks.items():
        row = ok_row(image_id, mask, np.full(mask.shape, 200, np.uint8), [])
        if image_id == "remote.jpg":
            row["uri"] = "s3://bucket/in/remote.jpg"
        else:
            Image.fromarray(mask * 80).save(inputs / image_id)
            row["uri"] = (inputs / image_id).as_uri()
        rows.append(row)
    output = write_output(tmp_path / "out", rows)
    return output, masks, inputs


def test_yolo_polygons_rasterise_back_to_the_masks(exported, tmp_path):
    output, masks, inputs = exported
    dest = tmp_path / "yolo"
    result = cli("export", str(output), str(dest), "--format", "yolo", "--min-area", str(MIN_AREA))
    assert result.returncode == 0, result.stderr
    total = 0
    for image_id, mask in masks.items():
        stem = image_id.rsplit(".", 1)[0]
        polygons = read_polygons(dest / "labels" / f"{stem}.txt", mask.shape)
        total += len(polygons)
        raster = rasterise(polygons, mask.shape)
        for value in range(3):
            kept, regions = regions_kept(mask, value)
            assert sum(1 for v, _ in polygons if v == value) == regions, (image_id, value)
            if regions:
                drawn = raster == value
                iou = (drawn & kept).sum() / (drawn | kept).sum()
                assert iou > 0.9, (image_id, value, iou)
    assert f"exported 3 images and {total} polygons" in result.stdout
    assert "regions too small left out" in result.stdout  # the specks, and the blobs' crumbs
    assert rasterise(read_polygons(dest / "labels" / "scene.txt", (60, 80)), (60, 80))[20:30, 18:28].tolist() == (
        np.full((10, 10), 2).tolist()
    )  # the dog square inside the cat disc, exactly
    for image_id in ("scene.jpg", "sub/blobs.png"):
        link = dest / "images" / image_id
        assert link.is_symlink() and os.readlink(link) == str(inputs / image_id)
    assert not (dest / "images" / "remote.jpg").exists()
    assert (dest / "images.txt").read_text() == "images/remote.jpg\ts3://bucket/in/remote.jpg\n"
    assert "1 images are not on this machine's disk" in result.stdout
    data = yaml.safe_load((dest / "data.yaml").read_text())
    assert data == {"path": str(dest.resolve()), "train": "images", "val": "images",
                    "names": {0: "background", 1: "cat", 2: "dog"}}  # fmt: skip
    assert "images.txt" in (dest / "data.yaml").read_text()


def test_yolo_leaves_out_pixels_below_their_class_threshold(tmp_path):
    mask = scene()
    confidence = np.full(mask.shape, 200, np.uint8)
    confidence[:, :12] = 100  # below background's and cat's 0.5, above dog's 0.3: the dog specks stay
    output = write_output(tmp_path / "out", [ok_row("scene.jpg", mask, confidence, [])])
    dest = tmp_path / "yolo"
    args = ["--format", "yolo", "--min-area", str(MIN_AREA), "--ignore-below", "0.5", "--ignore-below-class=dog=0.3"]
    result = cli("export", str(output), str(dest), *args)
    assert result.returncode == 0, result.stderr
    ignored = confidence < np.array([127.5, 127.5, 76.5])[mask]
    assert f"{int(ignored.sum())} pixels" in result.stdout and "left out as unsure" in result.stdout
    polygons = read_polygons(dest / "labels" / "scene.txt", mask.shape)
    raster = rasterise(polygons, mask.shape)
    kept_mask = np.where(ignored, 255, mask)
    for value in range(3):
        kept, regions = regions_kept(kept_mask, value)
        assert sum(1 for v, _ in polygons if v == value) == regions
        drawn = raster == value
        assert (drawn & kept).sum() / (drawn | kept).sum() > 0.9
    assert (raster[:, :12] != 1).all()  # no cat polygon where cat was unsure
    assert "images.txt" not in (dest / "data.yaml").read_text()  # file:///data/scene.jpg is on this disk


def test_yolo_export_again_replaces_its_links_and_never_writes_through_others(exported, tmp_path):
    output, _, _ = exported
    dest = tmp_path / "yolo"
    assert cli("export", str(output), str(dest), "--format", "yolo").returncode == 0
    again = cli("export", str(output), str(dest), "--format", "yolo")
    assert again.returncode == 0, again.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (dest / "labels" / "sub").rename(tmp_path / "old-sub")
    (dest / "labels" / "sub").symlink_to(elsewhere)
    result = cli("export", str(output), str(dest), "--format", "yolo")
    assert result.returncode == 2 and "symbolic link" in result.stderr, result.stderr
    assert list(elsewhere.iterdir()) == []
    (dest / "labels" / "sub").unlink()
    (dest / "images" / "scene.jpg").unlink()
    (dest / "images" / "scene.jpg").write_bytes(b"someone's own file")
    result = cli("export", str(output), str(dest), "--format", "yolo")
    assert result.returncode == 2 and "is not a link to an input image" in result.stderr, result.stderr
    assert (dest / "images" / "scene.jpg").read_bytes() == b"someone's own file"
