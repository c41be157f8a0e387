"""`pipeline.label` against a real S3 server (SeaweedFS): credentials required, every image once,
incremental and overwrite on object storage, and no credential in anything a run writes or logs."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from helpers import remote_output_table, run_label
from PIL import Image

from pipeline import read_image_ids
from sfp_core import SFPConfig, Vocabulary

pytestmark = pytest.mark.timeout(300)

RUN = {
    "vocabulary": Vocabulary([["background", "sky"], ["cat"], ["dog"]]),
    "arch": "SFP-Tiny-16",
    "weights": "random",
    "config": SFPConfig(short_side=224),
}


def upload(fs: pafs.FileSystem, root: Path, prefix: str) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with fs.open_output_stream(f"{prefix}/{path.relative_to(root).as_posix()}") as stream:
                stream.write(path.read_bytes())


def objects(fs: pafs.FileSystem, prefix: str) -> dict[str, bytes]:
    found = {}
    for info in fs.get_file_info(pafs.FileSelector(prefix, recursive=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as stream:
                found[info.path] = stream.read()
    return found


def test_unauthenticated_and_wrongly_signed_requests_are_refused(s3_server):
    s3_server.create_bucket("sfp-private")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{s3_server.endpoint_url}/sfp-private?list-type=2", timeout=5)
    assert info.value.code == 403
    endpoint = s3_server.endpoint_url.removeprefix("http://")
    anonymous = pafs.S3FileSystem(anonymous=True, endpoint_override=endpoint, scheme="http", region="us-east-1")
    forged = pafs.S3FileSystem(
        access_key=s3_server.access_key,
        secret_key="not-the-secret",
        endpoint_override=endpoint,
        scheme="http",
        region="us-east-1",
    )
    for fs in (anonymous, forged):
        with pytest.raises(OSError, match=r"(?i)denied|forbidden|signature"):
            fs.get_file_info(pafs.FileSelector("sfp-private", recursive=True))


def test_s3_runs_label_every_image_once_and_leak_no_credentials(
    ray_local, s3_server, image_corpus, capfd, caplog, tmp_path
):
    caplog.set_level(logging.DEBUG)
    root, expected = image_corpus
    fs = s3_server.filesystem()
    for bucket in ("sfp-input", "sfp-output"):
        s3_server.create_bucket(bucket)
    upload(fs, root, "sfp-input/corpus")
    where = s3_server.storage_options  # endpoint and region only: credentials come from the environment
    # The output side also gets them as storage options, which must be redacted like the environment's.
    output_options = {**where, "key": s3_server.access_key, "secret": s3_server.secret_key}
    output = "s3://sfp-output/labels/corpus"
    common = {"input_storage_options": where, "output_storage_options": output_options, **RUN}

    first = run_label("s3://sfp-input/corpus", output, mode="incremental", confidence=True, rows_per_file=6, **common)
    table = remote_output_table(fs, "sfp-output/labels/corpus")
    ids = table.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) and set(ids) == set(expected)
    for row in table.to_pylist():
        status, detail = expected[row["image_id"]]
        assert row["status"] == status and row["uri"] == f"s3://sfp-input/corpus/{row['image_id']}"
        if status == "ok":
            mask = Image.open(io.BytesIO(row["mask_png"]))
            assert mask.size == detail == (row["width"], row["height"])
            assert np.asarray(Image.open(io.BytesIO(row["confidence_png"]))).shape == mask.size[::-1]
        else:
            assert row["error"].startswith(f"{detail}: ") and row["mask_png"] is None
    assert (first.total, first.skipped, first.ok + first.error) == (len(expected), 0, len(expected))
    assert first.output_uri == output and first.manifest_uri.startswith(f"{output}/_sfp/runs/")
    manifest = json.loads(
        objects(fs, "sfp-output/labels/corpus/_sfp/runs")[f"sfp-output/labels/corpus/_sfp/runs/{first.run_id}.json"]
    )
    assert manifest["status"] == "succeeded"
    assert manifest["output"]["storage_options"] == {**where, "key": "<redacted>", "secret": "<redacted>"}
    written = objects(fs, "sfp-output")  # the first run's files; the overwrite below replaces them

    again = run_label("s3://sfp-input/corpus", output, mode="incremental", **common)
    assert (again.skipped, again.ok + again.error, again.files) == (len(expected), 0, ())

    subset = sorted(i for i, (status, _) in expected.items() if status == "ok")[:3]
    fs.delete_dir_contents("sfp-input/subset", missing_dir_ok=True)
    for image_id in subset:
        fs.copy_file(f"sfp-input/corpus/{image_id}", f"sfp-input/subset/{image_id}")
    replaced = run_label("s3://sfp-input/subset", output, mode="overwrite", **common)
    assert read_image_ids(output, output_options) == set(subset)
    table = remote_output_table(fs, "sfp-output/labels/corpus")
    assert set(table.column("run_id").to_pylist()) == {replaced.run_id}
    final = objects(fs, "sfp-output")
    assert not [p for p in final if "/_sfp/staging/" in p or "/partial-" in p]
    written.update(final)

    # No credential in any object a run wrote, in what it printed or logged, or in Ray's session logs.
    captured = capfd.readouterr()
    texts = {"stdout": captured.out.encode(), "stderr": captured.err.encode(), "log": caplog.text.encode()}
    texts.update(written)
    logs = Path(ray_local._private.worker.global_worker.node.get_logs_dir_path())
    texts.update({str(p): p.read_bytes() for p in logs.rglob("*") if p.is_file()})
    assert len(written) >= 6 and len(texts) > len(written) + 3
    for secret in (s3_server.secret_key, s3_server.access_key):
        leaks = [name for name, data in texts.items() if secret.encode() in data]
        assert not leaks, f"credential found in {leaks[:5]}"


def test_a_run_configured_only_through_environment_variables(ray_local, s3_server, image_corpus, monkeypatch):
    """AWS_ENDPOINT_URL and AWS_DEFAULT_REGION, no storage options: every call goes to the same server."""
    root, expected = image_corpus
    fs = s3_server.filesystem()
    for bucket in ("sfp-env-in", "sfp-env-out"):
        s3_server.create_bucket(bucket)
    upload(fs, root, "sfp-env-in/corpus")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    summary = run_label("s3://sfp-env-in/corpus", "s3://sfp-env-out/labels", storage_retry_s=5, **RUN)
    assert summary.total == len(expected) and summary.ok + summary.error == len(expected)
    table = remote_output_table(fs, "sfp-env-out/labels")
    assert sorted(table.column("image_id").to_pylist()) == sorted(expected)
    assert objects(fs, "sfp-env-out/labels/_sfp/lease")  # the lease went to the same server as the data


def test_shards_tables_and_lists_on_s3_label_each_image_once_like_loose_files(ray_local, s3_server, image_corpus):
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    root, _ = image_corpus
    names = ["rgb.jpg", "gray.png", "palette.png", "cmyk.jpg"]
    images = {n: (root / n).read_bytes() for n in names}
    fs = s3_server.filesystem()
    s3_server.create_bucket("sfp-formats")

    def put(key: str, data: bytes) -> None:
        with fs.open_output_stream(f"sfp-formats/{key}") as stream:
            stream.write(data)

    def tar_of(members: list[tuple[str, bytes]]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    for name, data in images.items():
        put(f"loose/{name}", data)
    put("shards/000.tar", tar_of([(f"k{i}.{n.rsplit('.', 1)[1]}", images[n]) for i, n in enumerate(names[:2])]))
    put("shards/001.tar", tar_of([("k2.png", images[names[2]]), ("bad.jpg", b"not an image")]))
    whole = tar_of([("t0.jpg", images[names[3]]), ("t1.jpg", images[names[3]])])
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        cut = tar.getmember("t1.jpg").offset_data + 100
    put("shards/002.tar", whole[:cut])  # cut inside t1's bytes
    table = pa.table({"id": ["a", "b"], "image": [images[names[0]], images[names[1]]]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=1)
    put("tables/part-0.parquet", sink.getvalue())
    put("lists/subset.csv", f"uri,id\n../loose/{names[0]},x\ns3://sfp-formats/loose/{names[2]},y\n".encode())
    put("lists/relative.txt", f"s3://sfp-formats/loose/{names[1]}\nmissing.jpg\n".encode())

    where = {"input_storage_options": s3_server.storage_options, "output_storage_options": s3_server.storage_options}

    def label(uri: str, out: str, **options) -> dict[str, dict]:
        run_label(uri, f"s3://sfp-formats/out/{out}", mode="overwrite", **where, **options, **RUN)
        rows = remote_output_table(fs, f"sfp-formats/out/{out}").to_pylist()
        assert len({r["image_id"] for r in rows}) == len(rows)
        return {r["image_id"]: r for r in rows}

    def mask(row: dict) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(row["mask_png"])))

    loose = label("s3://sfp-formats/loose", "loose")
    shards = label("s3://sfp-formats/shards/{000..002}.tar", "shards", format="webdataset")
    assert {i: r["status"] for i, r in shards.items()} == {
        "000.tar/k0": "ok", "000.tar/k1": "ok", "001.tar/k2": "ok", "001.tar/bad": "error", "002.tar/t0": "ok",
        "002.tar": "error",
    }  # fmt: skip
    assert shards["002.tar"]["error"].startswith("truncated: shard 002.tar: ")
    for image_id, name in (("000.tar/k0", names[0]), ("001.tar/k2", names[2]), ("002.tar/t0", names[3])):
        np.testing.assert_array_equal(mask(shards[image_id]), mask(loose[name]))
    tables = label("s3://sfp-formats/tables", "tables", format="parquet")
    np.testing.assert_array_equal(mask(tables["b"]), mask(loose[names[1]]))
    listed = label("s3://sfp-formats/lists/subset.csv", "csv", format="list")
    assert set(listed) == {"x", "y"} and listed["x"]["error"].startswith("unsafe entry")  # ../ leaves the list
    np.testing.assert_array_equal(mask(listed["y"]), mask(loose[names[2]]))
    relative = label("s3://sfp-formats/lists/relative.txt", "txt", format="list")
    assert relative["missing.jpg"]["uri"] == "s3://sfp-formats/lists/missing.jpg"
    assert relative["missing.jpg"]["error"].startswith("unreadable: ")
    np.testing.assert_array_equal(mask(relative[f"s3://sfp-formats/loose/{names[1]}"]), mask(loose[names[1]]))
