"""Workers write the data files on a real, credentialed S3 (SeaweedFS): a driver killed twice mid-run, with
confidence maps on, then run again, leaves every image exactly once, and no staged part behind."""

from __future__ import annotations

import textwrap

import pyarrow.fs as pafs
import pytest
from helpers import kill_after_commits, remote_output_table, run_label

from sfp_core import SFPConfig, Vocabulary

pytestmark = pytest.mark.timeout(600)

VOCAB = [["background"], ["cat"], ["dog"]]


def test_a_driver_killed_twice_on_s3_then_run_again_leaves_every_image_once(ray_local, s3_server, image_corpus):
    root, _ = image_corpus
    fs = s3_server.filesystem()
    s3_server.create_bucket("sfp-killed")
    names = [f"copy_{i:02d}.jpg" for i in range(40)]
    for name in names:
        with fs.open_output_stream(f"sfp-killed/in/{name}") as out:
            out.write((root / "rgb.jpg").read_bytes())
    where = s3_server.storage_options
    driver = textwrap.dedent(
        f"""
        from pipeline import Destination, LabelRequest, ModelChoice, Resources, Source, label
        from sfp_core import SFPConfig, Vocabulary
        label(LabelRequest(
            input=Source(uri="s3://sfp-killed/in", storage_options={where!r}),
            output=Destination(uri="s3://sfp-killed/out", mode="incremental", rows_per_file=2, confidence=True,
                               storage_options={where!r}),
            vocabulary=Vocabulary({VOCAB!r}),
            model=ModelChoice(arch="SFP-Tiny-16", weights="random"),
            config=SFPConfig(short_side=224),
            resources=Resources(batch_size=2),
        ))
        """
    )

    def committed() -> int:
        found = fs.get_file_info(pafs.FileSelector("sfp-killed/out", recursive=True, allow_not_found=True))
        return sum(i.type == pafs.FileType.File and "/data-" in i.path for i in found)

    address = ray_local.get_runtime_context().gcs_address
    kill_after_commits(driver, committed, 1, address)
    first = committed()
    kill_after_commits(driver, committed, first + 1, address)
    kept = remote_output_table(fs, "sfp-killed/out", ["image_id"]).column("image_id").to_pylist()
    assert 0 < len(kept) < len(names) and len(set(kept)) == len(kept), "the driver was not killed midway"

    summary = run_label(
        "s3://sfp-killed/in",
        "s3://sfp-killed/out",
        input_storage_options=where,
        output_storage_options=where,
        mode="incremental",
        confidence=True,
        vocabulary=Vocabulary(VOCAB),
        arch="SFP-Tiny-16",
        weights="random",
        config=SFPConfig(short_side=224),
    )
    ids = remote_output_table(fs, "sfp-killed/out", ["image_id"]).column("image_id").to_pylist()
    assert sorted(ids) == names  # every image exactly once: no duplicates, none missing
    assert summary.skipped == len(kept) and summary.ok == len(names) - len(kept)
    staged = fs.get_file_info(pafs.FileSelector("sfp-killed/out/_sfp/staging", recursive=True, allow_not_found=True))
    assert not [i.path for i in staged if i.type == pafs.FileType.File]
