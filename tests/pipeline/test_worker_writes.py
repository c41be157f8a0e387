"""Workers write the data files; the driver commits their records (docs/design.md, "Exactly once").

Where the design can break exactly-once: a staging task retried after its file was written, a merge task
retried after its data file was written, a file written whose record never reached the driver, a dead
run's late write landing after the next run read which images were done. Each is driven here on real
files and a real local Ray, and each assertion fails on a commit that skips the step it tests."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import ok_row, output_table, run_label

import pipeline.labelling
from pipeline import SCHEMA
from pipeline.lease import OutputLease
from pipeline.output import PartRecord, PartWriting, merge_parts, stage_parts
from pipeline.retry import Retry
from pipeline.sink import FlushTimer, PartCommitter, WriterSettings
from pipeline.storage import Location
from sfp_core import SFPConfig, Vocabulary

pytestmark = pytest.mark.timeout(300)

RUN = {
    "vocabulary": Vocabulary([["background"], ["cat"], ["dog"]]),
    "arch": "SFP-Tiny-16",
    "weights": "random",
    "config": SFPConfig(short_side=224),
}


def copy_images(root: Path, names: list[str], target: Path) -> None:
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / name, target / name)


def rows(names: list[str]) -> pa.Table:
    return pa.Table.from_pylist([ok_row(n, np.zeros((2, 2), np.uint8)) for n in names], schema=SCHEMA)


def writing(tmp_path, rows_per_file: int = 3) -> PartWriting:
    return PartWriting(Location.parse(str(tmp_path / "out")), "r1", SCHEMA, Retry(), rows_per_file)


def test_a_staging_task_run_twice_writes_the_same_parts(tmp_path):
    """A retried stage task (its first attempt wrote its files, then died) rewrites the same names."""
    how = writing(tmp_path)
    first = PartRecord.rows_of(stage_parts(rows([f"{i}.jpg" for i in range(7)]), writing=how))
    again = PartRecord.rows_of(stage_parts(rows([f"{i}.jpg" for i in range(7)]), writing=how))
    assert first == again and [p.rows for p in first] == [3, 3, 1]  # at most rows_per_file rows a part
    assert len(list((tmp_path / "out" / "_sfp" / "staging" / "r1").glob("*.arrow"))) == 3


def test_a_merge_run_twice_reports_the_file_it_wrote(tmp_path):
    """A retried merge (its first attempt wrote the data file and deleted the parts, then died) finds the
    file and reports it, instead of failing or writing a second one."""
    how = writing(tmp_path)
    parts = PartRecord.rows_of(stage_parts(rows([f"{i}.jpg" for i in range(5)]), writing=how))
    staged = [p.file for p in parts]
    first = merge_parts(how, staged, "data-r1", "part-r1-000000.parquet")
    again = merge_parts(how, staged, "data-r1", "part-r1-000000.parquet")
    assert first == again and (first.rows, first.ok) == (5, 5)
    assert not list((tmp_path / "out" / "_sfp" / "staging" / "r1").glob("*"))  # the parts went once merged
    table = pq.read_table(tmp_path / "out" / first.file)
    assert table.column("image_id").to_pylist() == [f"{i}.jpg" for i in range(5)]
    assert table.schema.metadata == SCHEMA.metadata  # the output's identity travels in every footer


def test_a_merge_whose_parts_vanished_before_any_file_was_written_fails(tmp_path):
    """No data file and a part gone: an error naming the file, never a data file missing rows."""
    how = writing(tmp_path)
    parts = PartRecord.rows_of(stage_parts(rows([f"{i}.jpg" for i in range(5)]), writing=how))
    (tmp_path / "out" / parts[1].file).unlink()
    with pytest.raises(FileNotFoundError, match=r"vanished before they were merged into .*part-r1-000000"):
        merge_parts(how, [p.file for p in parts], "data-r1", "part-r1-000000.parquet")
    assert not list((tmp_path / "out" / "data-r1").glob("*"))  # not even a partial file


def test_the_committer_merges_full_groups_and_what_waited_commit_every_s(ray_local, tmp_path):
    """Groups of staged parts become data files of at most rows_per_file rows; a short group is merged once
    its first part waited commit_every_s (by the timer, with no new parts arriving); nothing is lost or
    written twice, and parts the driver never heard of are never merged."""
    how = writing(tmp_path)
    records = [stage_parts(rows([f"{i}.jpg", f"{i}b.jpg"]), writing=how) for i in range(3)]
    orphan = stage_parts(rows(["orphan.jpg"]), writing=how)  # its record never reaches the driver
    settings = WriterSettings(rows_per_file=3, commit_every_s=0.5, commit_each_file=True)
    with OutputLease(how.output, "test") as lease:
        committer = PartCommitter(how, "data-r1", settings, claim=lease.claim, merge_cpus=0.5)
        assert committer.add(records[0]) == (2, 0)
        assert committer.add(records[1]) == (2, 0)  # 2 + 2 > 3: the first part's group is full
        committer.add(records[2])
        with FlushTimer(committer):
            deadline = time.monotonic() + 60
            while committer.rows < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
    assert sorted(f.rows for f in committer.written) == [2, 2, 2]
    files = sorted((tmp_path / "out" / "data-r1").glob("*.parquet"))
    ids = [i for path in files for i in pq.read_table(path).column("image_id").to_pylist()]
    assert sorted(ids) == sorted(f"{i}{s}.jpg" for i in range(3) for s in ("", "b"))
    left = list((tmp_path / "out" / "_sfp" / "staging" / "r1").glob("*.arrow"))
    assert [p.name for p in left] == [PartRecord.rows_of(orphan)[0].file.rsplit("/", 1)[1]]


def test_a_data_file_whose_record_was_lost_counts_as_labelled(ray_local, image_corpus, tmp_path):
    """A merge that wrote its data file but whose driver died before hearing of it: the file is whole and
    in the data folder, so the next run skips its images rather than labelling them twice."""
    root, expected = image_corpus
    names = sorted(n for n, (status, _) in expected.items() if status == "ok")[:6]
    source, output = tmp_path / "in", tmp_path / "out"
    copy_images(root, names[:4], source)
    first = run_label(str(source), str(output), mode="incremental", **RUN)
    assert pc.sum(pc.is_in(output_table(output)["image_id"], pa.array(names[:4]))).as_py() == 4
    # the dead run's file: two of the new images, written where a merge writes
    copy_images(root, names[4:], source)
    lost = rows(names[4:])
    folder = output / f"data-{first.run_id}"
    pq.write_table(lost.replace_schema_metadata(pq.read_schema(next(folder.glob("*.parquet"))).metadata),
                   folder / "part-deadrun-000000.parquet")  # fmt: skip
    second = run_label(str(source), str(output), mode="incremental", **RUN)
    assert (second.ok + second.error, second.skipped) == (0, 6)
    ids = output_table(output).column("image_id").to_pylist()
    assert sorted(ids) == sorted(names)


def test_a_dead_runs_late_write_is_removed_when_the_next_run_commits(ray_local, image_corpus, tmp_path, monkeypatch):
    """A dead run's upload that lands after the next run read which images were done holds images that run
    labels again: the run's commit deletes it, and every image has one row."""
    root, expected = image_corpus
    names = sorted(n for n, (status, _) in expected.items() if status == "ok")[:6]
    source, output = tmp_path / "in", tmp_path / "out"
    copy_images(root, names[:2], source)
    first = run_label(str(source), str(output), mode="incremental", **RUN)
    copy_images(root, names[2:], source)
    folder = output / f"data-{first.run_id}"
    metadata = pq.read_schema(next(folder.glob("*.parquet"))).metadata
    real = pipeline.labelling._write_rows

    def late_write_then_label(*args, **kwargs):
        late = rows(names[2:4]).replace_schema_metadata(metadata)
        pq.write_table(late, folder / "part-deadrun-000007.parquet")  # after the run read which ids are done
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline.labelling, "_write_rows", late_write_then_label)
    second = run_label(str(source), str(output), mode="incremental", **RUN)
    assert (second.ok + second.error, second.skipped) == (4, 2)
    assert not (folder / "part-deadrun-000007.parquet").exists()
    ids = output_table(output).column("image_id").to_pylist()
    assert sorted(ids) == sorted(names) and len(set(ids)) == len(ids)


def test_no_labelled_row_passes_through_the_driver(ray_local, image_corpus, tmp_path, monkeypatch):
    """What reaches the driver is one small record per staged part, never the rows' masks."""
    root, expected = image_corpus
    names = sorted(n for n, (status, _) in expected.items() if status == "ok")[:4]
    copy_images(root, names, tmp_path / "in")
    seen: list[list[str]] = []
    real = PartCommitter.add

    def spy(self, records):
        seen.append(records.column_names)
        return real(self, records)

    monkeypatch.setattr(PartCommitter, "add", spy)
    summary = run_label(str(tmp_path / "in"), str(tmp_path / "out"), mode="overwrite", confidence=True, **RUN)
    assert summary.ok == 4 and seen
    assert all(columns == ["file", "rows", "ok", "bytes"] for columns in seen)


def test_an_output_before_its_first_commit_reads_as_an_empty_table(tmp_path):
    """The first incremental run writes the pointer before any file: readers get no rows, with the columns."""
    from pipeline import LabelledOutput, read_labels
    from pipeline.output import LabelIdentity, Pointer

    identity = LabelIdentity(
        arch="SFP-Tiny-16",
        weights="random",
        classes=[["background"], ["cat"]],
        vocabulary_fingerprint="f",
        config={},
        config_hash="c",
    )
    output = Location.parse(str(tmp_path / "out"))
    Pointer(data="data-r1", identity=identity, created_by="r1").write(output, Retry())
    opened = LabelledOutput.open(str(tmp_path / "out"))
    table = opened.dataset.to_table(columns=["image_id", "mask_png", "status"])
    assert table.num_rows == 0 and table.column_names == ["image_id", "mask_png", "status"]
    assert list(read_labels(str(tmp_path / "out"))) == []


def test_the_card_counts_only_files_it_has_not_counted(tmp_path, monkeypatch):
    """The card's counts come from `_sfp/counts.json` and the run's records: a file is read only when the
    list does not know it at its size (added by an interrupted run, or rewritten by a relabel)."""
    from helpers import error_row, write_output

    import pipeline.output.card as card
    from pipeline.output import FileCount, Pointer, write_card

    root = write_output(tmp_path / "out", [[ok_row(f"{i}.jpg", np.zeros((2, 2), np.uint8)) for i in range(3)]])
    output, retry = Location.parse(str(root)), Retry()
    pointer = Pointer.read(output, retry)
    reads: list[str] = []
    real = card._count
    monkeypatch.setattr(card, "_count", lambda o, path, size, r: reads.append(path) or real(o, path, size, r))

    def title() -> str:
        return next(line for line in (root / "README.md").read_text().splitlines() if line.startswith("# "))

    write_card(output, pointer, 1, retry)
    assert title() == "# SFP pseudo-labels: 3 images (3 ok, 0 error rows)" and len(reads) == 1
    write_card(output, pointer, 1, retry)
    assert len(reads) == 1  # nothing new: nothing read

    new = root / "data-run1" / "part-9.parquet"
    pq.write_table(pa.Table.from_pylist([error_row("x.jpg"), error_row("y.jpg")], schema=SCHEMA), new)
    size = new.stat().st_size
    write_card(output, pointer, 2, retry, {"data-run1/part-9.parquet": FileCount(size=size, rows=2, ok=0)})
    assert title() == "# SFP pseudo-labels: 5 images (3 ok, 2 error rows)" and len(reads) == 1  # from the record

    pq.write_table(pa.Table.from_pylist([error_row("x.jpg")], schema=SCHEMA), new)  # a relabel rewrote it
    write_card(output, pointer, 2, retry)
    assert title() == "# SFP pseudo-labels: 4 images (3 ok, 1 error rows)" and reads[-1].endswith("part-9.parquet")


def test_compact_rewrites_small_files_as_a_new_version(ray_local, tmp_path):
    """Files left short by interrupted runs are merged, in order, into files of at most rows_per_file rows in a
    new data folder; the pointer flips to it and the old folder stays for readers already in it."""
    import json
    import subprocess
    import sys

    from helpers import data_dir, write_output

    from pipeline import compact_output

    sizes = [1, 2, 1, 1, 2]
    files = [[ok_row(f"f{f}-{i}.jpg", np.full((2, 2), f, np.uint8)) for i in range(n)] for f, n in enumerate(sizes)]
    root = write_output(tmp_path / "out", files)
    before = output_table(root).sort_by("image_id")
    done = compact_output(str(root), rows_per_file=3)
    assert (done.files_before, done.files_after, done.rows) == (5, 3, 7)
    assert data_dir(root).name == done.after != done.before and (root / done.before).is_dir()
    assert sorted(pq.read_metadata(p).num_rows for p in data_dir(root).glob("*.parquet")) == [2, 2, 3]
    after = output_table(root).sort_by("image_id")
    assert after.equals(before.cast(after.schema))  # the same rows, byte for byte
    assert "7 images" in (root / "README.md").read_text()
    replaced = json.loads((root / "_sfp" / "current.json").read_text())["replaced"]
    assert [r["folder"] for r in replaced] == [done.before]

    again = subprocess.run(
        [str(Path(sys.executable).parent / "sfp-label"), "compact", str(root), "--rows-per-file", "3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0 and "nothing to compact" in again.stdout, again.stderr[-2000:]
