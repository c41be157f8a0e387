"""An output as its users read it: pyarrow, pandas, DuckDB, polars and Hugging Face datasets on the data
folder and the dataset card; `read_labels`; the COCO export checked with pycocotools; the card and the
Parquet metadata kept true across incremental runs and overwrites; one vocabulary per output; 0.1 outputs."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import ROOT, data_dir, output_table, run_label
from PIL import Image

from jobs.cli import main
from pipeline import ForeignFilesInOutput, LabelledOutput, LegacyOutputLayout, OutputLabelledDifferently, read_labels
from sfp_core import SFPConfig, Vocabulary

pytestmark = pytest.mark.timeout(300)

VOCAB = Vocabulary([["background", "sky"], ["cat"], ["dog", "puppy"]])
RUN = {"vocabulary": VOCAB, "arch": "SFP-Tiny-16", "weights": "random", "config": SFPConfig(short_side=224),
}  # fmt: skip
PHOTOS = sorted(path.name for path in (ROOT / "examples" / "images").glob("*.jpg"))


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def corpus(target: Path, photos: list[str], broken: bool = True) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in photos:
        shutil.copy(ROOT / "examples" / "images" / name, target / name)
    if broken:
        (target / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return target


def card_header(output: Path) -> dict:
    text = (output / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def labelled(ray_local, tmp_path_factory):
    base = tmp_path_factory.mktemp("readers")
    source = corpus(base / "in", PHOTOS)
    output = base / "out"
    run_label(str(source), str(output), mode="incremental", confidence=True, rows_per_file=2, **RUN)
    return output


def test_every_reader_opens_the_data_folder_with_the_same_rows(labelled, tmp_path):
    import duckdb
    import pandas as pd
    import polars as pl
    from datasets import load_dataset

    folder = data_dir(labelled)
    assert LabelledOutput.open(str(labelled)).data_folder == str(folder)  # what README tells readers to open
    expected = sorted([*PHOTOS, "broken.jpg"])
    assert sorted(output_table(labelled).column("image_id").to_pylist()) == expected
    assert sorted(pd.read_parquet(folder)["image_id"]) == expected
    assert sorted(pl.scan_parquet(folder).select("image_id").collect()["image_id"].to_list()) == expected
    found = duckdb.sql(f"SELECT image_id FROM read_parquet('{folder}/*.parquet') ORDER BY 1").fetchall()
    assert [row[0] for row in found] == expected
    by_dir = load_dataset("parquet", data_dir=str(folder), split="train", cache_dir=str(tmp_path / "hf1"))
    assert sorted(by_dir["image_id"]) == expected
    # Parquet readers given the whole output folder see only data too: `_sfp/` and README.md are skipped.
    assert sorted(pl.scan_parquet(f"{labelled}/data-*/*.parquet").collect()["image_id"].to_list()) == expected


def test_the_dataset_card_loads_with_decoded_masks_and_named_classes(labelled, tmp_path):
    from datasets import load_dataset

    rows = load_dataset(str(labelled), split="train", cache_dir=str(tmp_path / "hf2"))
    assert sorted(rows["image_id"]) == sorted([*PHOTOS, "broken.jpg"])
    assert rows.features["class_ids"].feature.names == ["background", "cat", "dog"]
    raw = {row["image_id"]: row for row in output_table(labelled).to_pylist()}
    for row in rows:
        stored = raw[row["image_id"]]
        if stored["status"] == "error":
            assert row["mask_png"] is None and row["error"].startswith("not an image")
            continue
        assert np.array_equal(np.asarray(row["mask_png"]), png(stored["mask_png"]))
        assert np.array_equal(np.asarray(row["confidence_png"]), png(stored["confidence_png"]))
        assert row["class_ids"] == stored["class_ids"]


def test_a_single_data_file_names_its_classes(labelled):
    for path in sorted(data_dir(labelled).glob("*.parquet")):
        identity = json.loads(pq.read_schema(path).metadata[b"sfp_label"])
        assert identity["classes"] == [["background", "sky"], ["cat"], ["dog", "puppy"]]
        assert identity["config_hash"] == RUN["config"].config_hash() and identity["arch"] == "SFP-Tiny-16"


def test_read_labels_gives_arrays_names_and_stats(labelled):
    raw = {row["image_id"]: row for row in output_table(labelled).to_pylist()}
    seen = []
    for image in read_labels(str(labelled), confidence=True):
        seen.append(image.image_id)
        stored = raw[image.image_id]
        if not image.ok:
            assert image.mask is None and image.error.startswith("not an image")
            continue
        assert image.mask.dtype == np.uint8 and image.mask.shape == (image.height, image.width)
        assert np.array_equal(image.mask, png(stored["mask_png"]))
        assert np.allclose(image.confidence * 255, png(stored["confidence_png"]), atol=1e-3)
        assert image.class_ids == np.unique(image.mask).tolist()
        assert image.class_names == [["background", "cat", "dog"][i] for i in image.class_ids]
        assert image.stats["outlier_count"] == stored["outlier_count"]
    assert sorted(seen) == sorted(raw)


def test_coco_export_decodes_back_to_the_masks(labelled, tmp_path):
    from pycocotools import mask as coco_mask
    from pycocotools.coco import COCO

    target = tmp_path / "coco.json"
    assert main(["export", str(labelled), str(target), "--format", "coco", "--ignore-below", "0.4"]) == 0
    coco = COCO(str(target))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["background", "cat", "dog"]
    raw = {row["image_id"]: row for row in output_table(labelled).to_pylist()}
    images = coco.loadImgs(coco.getImgIds())
    assert sorted(image["file_name"] for image in images) == PHOTOS  # the error row has no image entry
    for image in images:
        stored = raw[image["file_name"]]
        mask, confidence = png(stored["mask_png"]).astype(np.int64), png(stored["confidence_png"])
        want = np.where(confidence.astype(np.float32) < 0.4 * 255, -1, mask)  # unsure pixels: in no annotation
        rebuilt = np.full(mask.shape, -1)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        for annotation in annotations:
            pixels = coco_mask.decode(annotation["segmentation"]).astype(bool)
            assert not (rebuilt[pixels] >= 0).any()  # classes never overlap
            rebuilt[pixels] = annotation["category_id"] - 1
            ys, xs = np.nonzero(pixels)  # an independent area and box
            assert annotation["area"] == pixels.sum()
            assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert np.array_equal(rebuilt, want), image["file_name"]
        assert len(annotations) == len(set(np.unique(want)) - {-1})


def test_card_and_metadata_follow_incremental_runs_and_overwrites(ray_local, tmp_path):
    source, output = corpus(tmp_path / "in", PHOTOS[:2], broken=False), tmp_path / "out"

    def described() -> tuple[str, str]:
        header = card_header(output)
        path = header["configs"][0]["data_files"][0]["path"]
        title = next(line for line in (output / "README.md").read_text().splitlines() if line.startswith("# "))
        return path, title

    first = run_label(str(source), str(output), mode="incremental", **RUN)
    assert described() == (f"data-{first.run_id}/*.parquet", "# SFP pseudo-labels: 2 images (2 ok, 0 error rows)")
    corpus(source, PHOTOS[2:3])
    run_label(str(source), str(output), mode="incremental", **RUN)
    assert described() == (f"data-{first.run_id}/*.parquet", "# SFP pseudo-labels: 4 images (3 ok, 1 error rows)")
    assert output_table(output).num_rows == 4

    shutil.rmtree(source)
    corpus(source, PHOTOS[:1], broken=False)
    other = Vocabulary([["background"], ["rocket"]])
    replaced = run_label(str(source), str(output), mode="overwrite", **{**RUN, "vocabulary": other})
    assert described() == (f"data-{replaced.run_id}/*.parquet", "# SFP pseudo-labels: 1 images (1 ok, 0 error rows)")
    features = {f["name"]: f for f in card_header(output)["dataset_info"]["features"]}
    assert features["class_ids"]["list"]["class_label"]["names"] == {"0": "background", "1": "rocket"}
    (path,) = data_dir(output).glob("*.parquet")
    assert json.loads(pq.read_schema(path).metadata[b"sfp_label"])["classes"] == [["background"], ["rocket"]]


def test_an_incremental_run_with_another_vocabulary_is_refused(ray_local, tmp_path):
    source, output = corpus(tmp_path / "in", PHOTOS[:1], broken=False), tmp_path / "out"
    run_label(str(source), str(output), mode="incremental", **RUN)
    corpus(source, PHOTOS[1:2], broken=False)
    before = sorted(p.relative_to(output) for p in output.rglob("*") if p.is_file())
    other = Vocabulary([["background"], ["cat"], ["wolf"]])
    with pytest.raises(OutputLabelledDifferently, match=r"vocabulary .*background, cat, dog.*this run has vocabulary"):
        run_label(str(source), str(output), mode="incremental", **{**RUN, "vocabulary": other})
    with pytest.raises(OutputLabelledDifferently, match="SFP settings"):
        run_label(str(source), str(output), mode="incremental", **{**RUN, "config": SFPConfig(short_side=256)})
    assert sorted(p.relative_to(output) for p in output.rglob("*") if p.is_file()) == before  # nothing written
    assert output_table(output).num_rows == 1


def test_a_card_someone_else_wrote_is_foreign(ray_local, tmp_path):
    source, output = corpus(tmp_path / "in", PHOTOS[:1], broken=False), tmp_path / "out"
    output.mkdir()
    (output / "README.md").write_text("# my notes\n")
    with pytest.raises(ForeignFilesInOutput, match=r"README\.md"):
        run_label(str(source), str(output), mode="incremental", **RUN)
    run_label(str(source), str(output), mode="incremental", allow_foreign_files=True, **RUN)
    assert (output / "README.md").read_text() == "# my notes\n"  # left alone, no card written over it


def test_an_output_of_release_0_1_is_refused_until_upgraded(ray_local, tmp_path, capsys):
    """0.1 kept data files at the output root and manifests in `_runs/`: runs and readers refuse it with the
    command that moves it; `sfp-label upgrade` moves it without labelling, and incremental runs go on."""
    source, output = corpus(tmp_path / "in", PHOTOS[:2], broken=False), tmp_path / "out"
    first = run_label(str(source), str(output), mode="incremental", **RUN)
    folder = data_dir(output)
    for path in folder.glob("*.parquet"):  # make it look like 0.1 wrote it
        table = pq.read_table(path).replace_schema_metadata(None)
        pq.write_table(table, output / path.name)
    shutil.rmtree(folder)
    (output / "_sfp" / "runs").rename(output / "_runs")
    shutil.rmtree(output / "_sfp")
    (output / "README.md").unlink()

    corpus(source, PHOTOS[2:3], broken=False)
    with pytest.raises(LegacyOutputLayout, match=re.escape(f"sfp-label upgrade file://{output}`")):
        run_label(str(source), str(output), mode="incremental", **RUN)
    assert main(["show", str(output)]) == 2
    assert "sfp-label upgrade" in capsys.readouterr().err

    assert main(["upgrade", str(output)]) == 0
    assert not list(output.glob("*.parquet")) and not (output / "_runs").exists()
    assert (output / "_sfp" / "runs" / f"{first.run_id}.json").exists()
    assert sorted(output_table(output).column("image_id").to_pylist()) == PHOTOS[:2]
    assert card_header(output)["configs"][0]["data_files"][0]["path"].startswith("data-")
    again = run_label(str(source), str(output), mode="incremental", **RUN)
    assert (again.skipped, again.ok) == (2, 1)
    assert sorted(output_table(output).column("image_id").to_pylist()) == PHOTOS[:3]
