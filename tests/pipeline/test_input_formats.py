"""WebDataset shards, Parquet tables and URI lists, end to end on local disk: each sample exactly once, ids
stable, masks equal to those of the same images labelled as loose files, broken and hostile samples as error
rows, incremental re-runs, a killed driver; inputs are written with tarfile, webdataset, pyarrow and datasets."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import textwrap
from pathlib import Path

import helpers
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import run_label
from PIL import Image

from pipeline import InputHasNoImages, InputNotFound, InputUnusable, read_image_ids
from pipeline.checks import preflight
from sfp_core import SFPConfig, Vocabulary

pytestmark = pytest.mark.timeout(240)

RUN = {
    "vocabulary": Vocabulary([["background", "sky"], ["cat"], ["dog"]]),
    "arch": "SFP-Tiny-16",
    "weights": str(helpers.GOLDEN_WEIGHTS),
    "config": SFPConfig(short_side=224),
}
NAMES = ["rgb.jpg", "gray.png", "exif_rot90.jpg", "palette.png", "cmyk.jpg", "nested/a/b/deep.jpeg"]


def masks_of(output: Path) -> dict[str, np.ndarray]:
    table = helpers.output_table(output, ["image_id", "status", "mask_png"])
    return {
        r["image_id"]: np.asarray(Image.open(io.BytesIO(r["mask_png"]))) for r in table.to_pylist() if r["mask_png"]
    }


def rows_of(output: Path, columns: list[str] | None = None) -> dict[str, dict]:
    rows = helpers.output_table(output, columns).to_pylist()
    ids = [r["image_id"] for r in rows]
    assert len(ids) == len(set(ids)), "an image id was written twice"
    return {r["image_id"]: r for r in rows}


@pytest.fixture(scope="module")
def loose(ray_local, image_corpus, tmp_path_factory):
    """Six of the corpus's images labelled from loose files: the masks every other format must reproduce."""
    root, _ = image_corpus
    folder = tmp_path_factory.mktemp("loose")
    for name in NAMES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / name, folder / name)
    run_label(str(folder), str(folder.parent / "loose-out"), mode="overwrite", **RUN)
    masks = masks_of(folder.parent / "loose-out")
    assert sorted(masks) == sorted(NAMES)
    return folder, {name: (folder / name).read_bytes() for name in NAMES}, masks


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = (len(data) if kind == tarfile.REGTYPE else 0), kind, link
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def write_shards(folder: Path, images: dict[str, bytes]) -> dict[str, str]:
    """Four shards: two of images (tarfile; the webdataset package's TarWriter), one hostile, one truncated.
    Returns the ok samples' ids -> the loose file each holds."""
    import webdataset

    folder.mkdir(parents=True, exist_ok=True)
    ok = {}
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for k, name in enumerate(NAMES[:3]):
            extension = name.rsplit(".", 1)[1]
            add(tar, f"k{k}.{extension}", images[name])
            add(tar, f"k{k}.json", json.dumps({"url": f"http://example.com/{name}", "n": k}).encode())
            ok[f"00000.tar/k{k}"] = name
    with webdataset.TarWriter(str(folder / "00001.tar")) as sink:
        for k, name in enumerate(NAMES[3:]):
            extension = name.rsplit(".", 1)[1]
            sink.write({"__key__": f"dir/w{k}", extension: images[name], "txt": f"caption {k}"})
            ok[f"00001.tar/dir/w{k}"] = name
    with tarfile.open(folder / "00002.tar", "w") as tar:
        add(tar, "../evil.jpg", images[NAMES[0]])
        add(tar, "/abs.jpg", images[NAMES[0]])
        add(tar, "link.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add(tar, "dev.jpg", kind=tarfile.CHRTYPE)
        add(tar, "again.jpg", images[NAMES[0]])
        add(tar, "between.jpg", images[NAMES[1]])
        add(tar, "again.png", images[NAMES[1]])  # the key comes back after another: a second sample
        add(tar, "noimage.json", b"{}")
        add(tar, "text.jpg", b"not an image at all")
        ok["00002.tar/again"] = NAMES[0]
        ok["00002.tar/between"] = NAMES[1]
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as tar:
        for k in range(3):
            add(tar, f"t{k}.jpg", images[NAMES[0]])
    with tarfile.open(fileobj=io.BytesIO(whole.getvalue())) as tar:
        third = tar.getmembers()[2]
    (folder / "00003.tar").write_bytes(whole.getvalue()[: third.offset_data + 100])  # cut inside t2's bytes
    ok.update({"00003.tar/t0": NAMES[0], "00003.tar/t1": NAMES[0]})
    return ok


def test_webdataset_shards_every_sample_once_with_the_loose_files_masks(loose, tmp_path):
    _, images, loose_masks = loose
    shards = tmp_path / "shards"
    ok = write_shards(shards, images)
    output = tmp_path / "out"
    fields = {"url": "json.url", "n": "json.n", "caption": "txt"}
    uri = f"{shards}/{{00000..00003}}.tar"
    first = run_label(uri, str(output), format="webdataset", fields=fields, **RUN)

    rows = rows_of(output)
    errors = {image_id: row["error"] for image_id, row in rows.items() if row["status"] == "error"}
    assert {i for i, r in rows.items() if r["status"] == "ok"} == set(ok)
    masks = masks_of(output)
    for image_id, name in ok.items():
        np.testing.assert_array_equal(masks[image_id], loose_masks[name], err_msg=image_id)
    with tarfile.open(shards / "00002.tar") as tar:  # the second "again" sample's id carries its offset
        again = next(m.offset for m in tar.getmembers() if m.name == "again.png")
    assert errors.keys() == {
        "00002.tar/../evil", "00002.tar/abs", "00002.tar/link", "00002.tar/dev", f"00002.tar/again.{again}",
        "00002.tar/noimage", "00002.tar/text", "00003.tar",
    }  # fmt: skip
    reasons = {
        image_id.split("/", 1)[-1].removesuffix(f".{again}"): error.split(":")[0] for image_id, error in errors.items()
    }
    assert "'/abs.jpg' leaves the shard" in errors["00002.tar/abs"]
    assert reasons == {
        "../evil": "unsafe entry", "abs": "unsafe entry", "link": "unsafe entry", "dev": "unsafe entry",
        "again": "duplicate", "noimage": "no image", "text": "not an image", "00003.tar": "truncated",
    }  # fmt: skip
    assert "symbolic link" in errors["00002.tar/link"] and "character device" in errors["00002.tar/dev"]
    third = 2 * (512 + -(-len(images[NAMES[0]]) // 512) * 512)  # where t2's header starts
    assert f"from byte {third} on" in errors["00003.tar"]
    assert not list(tmp_path.rglob("evil*")) and not Path("/abs.jpg").exists()

    assert rows["00000.tar/k1"]["url"] == f"http://example.com/{NAMES[1]}" and rows["00000.tar/k1"]["n"] == "1"
    assert rows["00001.tar/dir/w2"]["caption"] == "caption 2" and rows["00001.tar/dir/w2"]["url"] is None
    assert rows["00001.tar/dir/w0"]["uri"] == f"file://{shards}/00001.tar#dir/w0.png"
    assert (first.ok, first.error, first.total, first.skipped) == (len(ok), len(errors), len(rows), 0)
    card = (output / "README.md").read_text()
    assert "name: url" in card and "name: caption" in card  # the kept fields are features of the dataset

    again = run_label(uri, str(output), format="webdataset", fields=fields, **RUN)
    assert (again.ok + again.error, again.skipped, again.total) == (0, len(rows), len(rows))
    with tarfile.open(shards / "00004.tar", "w") as tar:
        add(tar, "new.jpg", images[NAMES[2]])
    grown = run_label(f"{shards}/{{00000..00004}}.tar", str(output), format="webdataset", fields=fields, **RUN)
    assert (grown.ok, grown.skipped) == (1, len(rows))
    assert set(rows_of(output)) == set(rows) | {"00004.tar/new"}


def test_webdataset_other_fields_change_the_schema_so_they_are_refused(loose, tmp_path):
    _, images, _ = loose
    shards = tmp_path / "shards"
    with tarfile.open(shards.mkdir() or shards / "a.tar", "w") as tar:
        add(tar, "x.jpg", images[NAMES[0]])
    run_label(str(shards), str(tmp_path / "out"), format="webdataset", **RUN)
    from pipeline import OutputLabelledDifferently

    with pytest.raises(OutputLabelledDifferently, match="extra columns"):
        run_label(str(shards), str(tmp_path / "out"), format="webdataset", fields={"url": "json.url"}, **RUN)


def test_parquet_tables_written_by_pyarrow_and_by_datasets(loose, tmp_path):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    _, images, loose_masks = loose
    tables = tmp_path / "tables"
    (tables / "hf" / "data").mkdir(parents=True)
    plain = pa.table({"image": [images[n] for n in NAMES] + [None], "caption": [f"c{i}" for i in range(7)]})
    pq.write_table(plain, tables / "plain.parquet", row_group_size=4)  # two row groups
    hf = Dataset.from_dict(
        {"id": ["a", "b"], "image": [{"bytes": images[n], "path": n} for n in NAMES[:2]], "caption": ["ca", "cb"]},
        features=Features({"id": Value("string"), "image": ImageFeature(), "caption": Value("string")}),
    )
    hf.to_parquet(str(tables / "hf" / "data" / "train-00000-of-00002.parquet"))
    hf_schema = pq.read_schema(tables / "hf" / "data" / "train-00000-of-00002.parquet")
    assert hf_schema.field("image").type.num_fields == 2  # the Image feature's {bytes, path}
    path_only = pa.table({"id": ["c"], "image": [{"bytes": None, "path": "x.jpg"}], "caption": ["cc"]}, hf_schema)
    pq.write_table(path_only, tables / "hf" / "data" / "train-00001-of-00002.parquet")  # as datasets has it
    (tables / "README.md").write_text("not a table")

    output = tmp_path / "out"
    summary = run_label(str(tables), str(output), format="parquet", fields={"caption": "caption"}, **RUN)
    rows = rows_of(output)
    assert set(rows) == {f"plain.parquet#{i}" for i in range(7)} | {"a", "b", "c"}
    masks = masks_of(output)
    for i, name in enumerate(NAMES):
        np.testing.assert_array_equal(masks[f"plain.parquet#{i}"], loose_masks[name])
    np.testing.assert_array_equal(masks["a"], loose_masks[NAMES[0]])
    np.testing.assert_array_equal(masks["b"], loose_masks[NAMES[1]])
    assert rows["plain.parquet#6"]["error"].startswith("no image: column 'image' is empty")
    assert rows["c"]["error"].startswith("unreadable: ")  # x.jpg, read next to the table, is not there
    assert rows["b"]["caption"] == "cb" and rows["plain.parquet#5"]["caption"] == "c5"
    assert rows["plain.parquet#5"]["uri"] == f"file://{tables}/plain.parquet#row=5"
    assert (summary.ok, summary.error, summary.total) == (8, 2, 10)

    again = run_label(str(tables), str(output), format="parquet", fields={"caption": "caption"}, **RUN)
    assert (again.ok + again.error, again.skipped) == (1, 9)  # c's missing file is transient: tried again


def test_a_run_with_nothing_new_in_its_shards_or_tables_starts_no_model(loose, tmp_path, monkeypatch):
    """Units whose every sample is labelled are read before the stages start, so an incremental run with
    nothing new never builds the actor pool (before: it started the model, minutes on a CPU, only to skip
    every sample); a unit with one new sample still gets labelled, and the counts stay whole."""
    import pipeline.labelling

    _, images, _ = loose
    stage_chains = []
    real = pipeline.labelling._stages
    monkeypatch.setattr(pipeline.labelling, "_stages", lambda *a, **k: stage_chains.append(1) or real(*a, **k))
    shards, tables = tmp_path / "shards", tmp_path / "tables"
    shards.mkdir(), tables.mkdir()
    for index, name in enumerate(NAMES[:3]):
        with tarfile.open(shards / f"{index:05d}.tar", "w") as tar:
            add(tar, f"s{index}.{name.rsplit('.', 1)[1]}", images[name])
    pq.write_table(pa.table({"image": [images[n] for n in NAMES[:4]]}), tables / "t.parquet", row_group_size=2)
    for uri, fmt, samples in ((str(shards), "webdataset", 3), (str(tables), "parquet", 4)):
        output = str(tmp_path / f"out-{fmt}")
        first = run_label(uri, output, format=fmt, mode="incremental", **RUN)
        assert (first.ok, first.skipped, len(stage_chains)) == (samples, 0, 1)
        again = run_label(uri, output, format=fmt, mode="incremental", **RUN)
        assert (again.ok + again.error, again.skipped, again.total) == (0, samples, samples)
        assert len(stage_chains) == 1, f"{fmt}: a run with nothing to label built the stages"
        stage_chains.clear()
    with tarfile.open(shards / "00003.tar", "w") as tar:
        add(tar, "new.jpg", images[NAMES[0]])
    grown = run_label(str(shards), str(tmp_path / "out-webdataset"), format="webdataset", mode="incremental", **RUN)
    assert (grown.ok, grown.skipped, grown.total, len(stage_chains)) == (1, 3, 4, 1)


def test_parquet_image_paths_are_read_like_list_entries(loose, tmp_path):
    """`datasets` stores an Image column cast from paths as `{bytes: None, path}`: each file is read through the
    storage layer (absolute, or relative to the table's folder); a missing file, a path leaving the folder and
    an http URL are error rows, and nothing is fetched for the last two."""
    from datasets import Dataset, Image

    folder, _, loose_masks = loose
    tables = tmp_path / "tables"
    shutil.copytree(folder, tables / "images")
    (tmp_path / "outside.png").write_bytes((folder / "gray.png").read_bytes())
    paths = {"abs": f"{folder}/rgb.jpg", "rel": "images/palette.png", "missing": "images/missing.jpg",
             "escape": "../outside.png", "web": "http://example.invalid/x.png"}  # fmt: skip
    table = tables / "train.parquet"
    ds = Dataset.from_dict({"id": list(paths), "image": list(paths.values())}).cast_column("image", Image())
    ds.to_parquet(str(table), batch_size=8)  # else it stats every path, from the current folder, to size groups
    assert pq.read_table(table).column("image")[1].as_py() == {"bytes": None, "path": "images/palette.png"}

    summary = run_label(str(table), str(tmp_path / "out"), format="parquet", **RUN)
    rows, masks = rows_of(tmp_path / "out"), masks_of(tmp_path / "out")
    np.testing.assert_array_equal(masks["abs"], loose_masks["rgb.jpg"])
    np.testing.assert_array_equal(masks["rel"], loose_masks["palette.png"])
    assert rows["missing"]["error"].startswith("unreadable: ")  # transient: read again by the next run
    assert rows["escape"]["error"].startswith("unsafe entry: image path '../outside.png'")
    assert rows["web"]["error"].startswith("unsupported: image path http://example.invalid/x.png: protocol http")
    assert {i: r["uri"] for i, r in rows.items()} == {
        "abs": f"file://{folder}/rgb.jpg", "rel": f"file://{tables}/images/palette.png",
        "missing": f"file://{tables}/images/missing.jpg",
        "escape": f"file://{table}#row=3", "web": f"file://{table}#row=4",
    }  # fmt: skip
    assert (summary.ok, summary.error) == (2, 3)


def test_uri_lists_in_text_csv_and_parquet(loose, tmp_path):
    folder, _, loose_masks = loose
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "images").symlink_to(folder)
    text = ["# a comment", "images/rgb.jpg", "", f"{folder}/gray.png", f"file://{folder}/palette.png",
            "images/missing.jpg", "../escape.jpg", "images/rgb.jpg"]  # fmt: skip
    (lists / "some.txt").write_text("\n".join(text) + "\n")
    output = tmp_path / "out-text"
    summary = run_label(str(lists / "some.txt"), str(output), format="list", **RUN)
    rows = rows_of(output)
    assert set(rows) == {"images/rgb.jpg", f"{folder}/gray.png", f"file://{folder}/palette.png",
                         "images/missing.jpg", "../escape.jpg"}  # fmt: skip
    masks = masks_of(output)
    np.testing.assert_array_equal(masks["images/rgb.jpg"], loose_masks["rgb.jpg"])
    np.testing.assert_array_equal(masks[f"file://{folder}/palette.png"], loose_masks["palette.png"])
    assert rows["images/missing.jpg"]["error"].startswith("unreadable: ")
    assert rows["../escape.jpg"]["error"].startswith("unsafe entry: ")
    assert (summary.ok, summary.error) == (3, 2)

    (lists / "some.csv").write_text(
        f'uri,id,caption\nimages/cmyk.jpg,007,first\n{folder}/nested/a/b/deep.jpeg,8,"with, comma"\n'
    )
    run_label(str(lists / "some.csv"), str(tmp_path / "out-csv"), format="list", fields={"caption": "caption"}, **RUN)
    rows = rows_of(tmp_path / "out-csv")
    assert {i: r["caption"] for i, r in rows.items()} == {"007": "first", "8": "with, comma"}
    np.testing.assert_array_equal(masks_of(tmp_path / "out-csv")["8"], loose_masks["nested/a/b/deep.jpeg"])

    pq.write_table(pa.table({"uri": [f"{folder}/rgb.jpg"], "key": ["r"]}), lists / "some.parquet")
    run_label(str(lists / "some.parquet"), str(tmp_path / "out-pq"), format="list", id_column="key", **RUN)
    np.testing.assert_array_equal(masks_of(tmp_path / "out-pq")["r"], loose_masks["rgb.jpg"])


def test_format_mistakes_are_refused_before_any_work(tmp_path):
    def check(uri: str, **options):
        preflight(helpers.label_request(uri, str(tmp_path / "out"), **options, **RUN))

    pq.write_table(pa.table({"picture": [b"x"]}), tmp_path / "t.parquet")
    with pytest.raises(InputUnusable, match=r"has no column 'image' .*picture.*set input\.image_column"):
        check(str(tmp_path / "t.parquet"), format="parquet")
    with pytest.raises(InputUnusable, match=r"input\.fields caption: text"):
        check(str(tmp_path / "t.parquet"), format="parquet", image_column="picture", fields={"caption": "text"})
    pq.write_table(pa.table({"picture": pa.array([1])}), tmp_path / "n.parquet")
    with pytest.raises(InputUnusable, match="is int64, not image bytes"):
        check(str(tmp_path / "n.parquet"), format="parquet", image_column="picture")
    (tmp_path / "l.csv").write_text("url\nx.jpg\n")
    with pytest.raises(InputUnusable, match="no 'uri' column"):
        check(str(tmp_path / "l.csv"), format="list")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputHasNoImages, match="lists no URIs"):
        check(str(tmp_path / "empty.txt"), format="list")
    (tmp_path / "shards").mkdir()
    with pytest.raises(InputHasNoImages, match="names no shards matching train-"):
        check(f"{tmp_path}/shards/train-*.tar", format="webdataset")
    with pytest.raises(InputNotFound, match=r"first shard 000\.tar does not exist"):
        check(f"{tmp_path}/shards/{{000..009}}.tar", format="webdataset")
    with pytest.raises(InputNotFound):
        check(f"{tmp_path}/nowhere/{{000..009}}.tar", format="webdataset")


def test_killed_driver_on_shards_then_rerun_is_exactly_once(ray_local, image_corpus, tmp_path):
    root, _ = image_corpus
    shards, output = tmp_path / "shards", tmp_path / "out"
    shards.mkdir()
    data = (root / "rgb.jpg").read_bytes()
    expected = set()
    for s in range(8):
        with tarfile.open(shards / f"{s:03d}.tar", "w") as tar:
            for k in range(10):
                add(tar, f"{k:02d}.jpg", data)
                expected.add(f"{s:03d}.tar/{k:02d}")
    driver = textwrap.dedent(
        f"""
        from pipeline import Destination, LabelRequest, ModelChoice, Resources, Source, label
        from sfp_core import SFPConfig, Vocabulary
        label(LabelRequest(
            input=Source(uri={str(shards)!r}, format="webdataset"),
            output=Destination(uri={str(output)!r}, mode="incremental", rows_per_file=2),
            vocabulary=Vocabulary({[list(c) for c in RUN["vocabulary"].classes]!r}),
            model=ModelChoice(arch="SFP-Tiny-16", weights="random"),
            config=SFPConfig(short_side=448),
            resources=Resources(batch_size=2),
        ))
        """
    )
    helpers.kill_after_first_commit(driver, output, ray_local.get_runtime_context().gcs_address)
    committed = read_image_ids(str(output))
    assert 0 < len(committed) < len(expected), "the driver was not killed midway"

    slow = {**RUN, "weights": "random", "config": SFPConfig(short_side=448), "batch_size": 2}  # as killed
    summary = run_label(str(shards), str(output), format="webdataset", rows_per_file=2, **slow)
    ids = helpers.output_table(output, ["image_id"]).column("image_id").to_pylist()
    assert sorted(ids) == sorted(expected)  # each sample once: none lost, none twice
    assert (summary.skipped, summary.ok, summary.total) == (len(committed), len(expected) - len(committed), 80)
