"""`LabelTable` without Ray: the flip of an overwrite, the write recipe read back by other libraries, the
ids, the relabel drop, late files, and the card's counts checked against a count made here with pyarrow
(docs/design.md, "Output layout"). Tidy, expiry and damaged pointers: `test_output_versions.py`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import error_row, ok_row, write_output

from pipeline.output import KEEP_REPLACED_S, SCHEMA, LabelledOutput, LabelTable, Pointer, data_file
from pipeline.retry import Retry
from pipeline.storage import Location

RETRY = Retry(patience_s=5)
MASK = np.zeros((2, 2), np.uint8)


def table_of(root: Path, files: list[list[dict]]) -> LabelTable:
    write_output(root, files)
    return LabelTable(Location.parse(str(root)), RETRY)


def rows(*ids: str) -> pa.Table:
    return pa.Table.from_pylist([ok_row(i, MASK) for i in ids], schema=SCHEMA)


def pointer_json(root: Path) -> dict:
    return json.loads((root / "_sfp" / "current.json").read_text())


def test_an_overwrite_flip_makes_the_new_folder_the_table_and_keeps_the_old_one_a_while(tmp_path):
    root = tmp_path / "out"
    table = table_of(root, [[ok_row("a.jpg", MASK), ok_row("b.jpg", MASK)]])
    before = table.pointer()
    new = data_file(table.location, "data-run2", "part-run2-000000.parquet")
    table.write(new, [rows("c.jpg", "d.jpg", "e.jpg")], SCHEMA)
    assert sorted(table.image_ids().to_pylist()) == ["a.jpg", "b.jpg"]  # written, not yet committed
    table.replace_version(before.replaced_by("data-run2", before.identity, "run2", time.time()))
    assert pointer_json(root)["data"] == "data-run2"
    assert [r["folder"] for r in pointer_json(root)["replaced"]] == ["data-run1"]
    assert sorted(table.image_ids().to_pylist()) == ["c.jpg", "d.jpg", "e.jpg"]
    assert LabelledOutput.open(str(root)).dataset.count_rows() == 3
    assert (root / "data-run1").exists()  # readers that resolved the old pointer can finish
    later = table.pointer().expire(time.time() + KEEP_REPLACED_S + 1)
    assert later[1] == ["data-run1"]


def test_the_write_recipe_is_read_back_the_same_by_pyarrow_and_duckdb(tmp_path):
    table = table_of(tmp_path / "out", [[ok_row("a.jpg", MASK)]])
    path = data_file(table.location, "data-run1", "part-extra.parquet")
    written = rows(*(f"{n:03}.jpg" for n in range(50)))
    table.write(path, [written.slice(0, 20), written.slice(20)], SCHEMA)
    assert pq.read_table(path).to_pylist() == written.to_pylist()
    ids = [r[0] for r in duckdb.sql(f"select image_id from read_parquet('{path}') order by image_id").fetchall()]
    assert ids == [f"{n:03}.jpg" for n in range(50)]
    assert not [p for p in Path(path).parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_relabel_drops_only_transient_error_rows_and_deletes_a_file_left_empty(tmp_path):
    gone = {**error_row("gone.jpg"), "error": "unreadable: FileNotFoundError: gone"}
    broken = error_row("broken.jpg")  # "truncated: ...": the bytes were read; permanent
    only_gone = {**error_row("gone2.jpg"), "error": "unreadable: PermissionError: no"}
    root = tmp_path / "out"
    table = table_of(root, [[ok_row("a.jpg", MASK), gone, broken], [only_gone]])
    assert table.drop_rows_to_relabel("none") == 0
    assert table.drop_rows_to_relabel("transient") == 2
    left = sorted(i for p in (root / "data-run1").glob("*.parquet") for i in pq.read_table(p)["image_id"].to_pylist())
    assert left == ["a.jpg", "broken.jpg"]
    assert not (root / "data-run1" / "part-1.parquet").exists()
    assert table.drop_rows_to_relabel("all") == 1 and table.image_ids().to_pylist() == ["a.jpg"]


def test_late_files_go_and_the_files_a_run_knew_stay(tmp_path):
    root = tmp_path / "out"
    table = table_of(root, [[ok_row("a.jpg", MASK)], [ok_row("b.jpg", MASK)]])
    present = table.file_names("data-run1")
    assert present == {"data-run1/part-0.parquet", "data-run1/part-1.parquet"}
    late = data_file(table.location, "data-run1", "part-dead-000003.parquet")
    table.write(late, [rows("a.jpg")], SCHEMA)  # a dead run's upload, landing after this run started
    assert table.remove_late_files("data-run1", present) == ["data-run1/part-dead-000003.parquet"]
    assert table.file_names("data-run1") == present


def test_the_card_counts_what_pyarrow_counts_and_follows_a_rewritten_file(tmp_path):
    root = tmp_path / "out"
    table = table_of(root, [[ok_row("a.jpg", MASK), error_row("e.jpg")], [ok_row("b.jpg", MASK)]])
    pointer = table.pointer()

    def counted_here() -> tuple[int, int]:
        statuses = [s for p in (root / "data-run1").glob("*.parquet") for s in pq.read_table(p)["status"].to_pylist()]
        return len(statuses), statuses.count("ok")

    def card_says() -> str:
        return (root / "README.md").read_text().split("# SFP pseudo-labels: ", 1)[1].split("\n", 1)[0]

    assert table.write_card(pointer)
    total, ok = counted_here()
    assert card_says() == f"{total} images ({ok} ok, {total - ok} error rows)" == "3 images (2 ok, 1 error rows)"
    counts = json.loads((root / "_sfp" / "counts.json").read_text())
    assert counts["folder"] == "data-run1" and set(counts["files"]) == {
        "data-run1/part-0.parquet",
        "data-run1/part-1.parquet",
    }
    # A file replaced in place (as relabel does) has another size: it is counted again, not remembered.
    table.write(str(root / "data-run1" / "part-1.parquet"), [rows("b.jpg", "c.jpg", "d.jpg")], SCHEMA)
    assert table.write_card(pointer)
    assert card_says() == "5 images (4 ok, 1 error rows)" and counted_here() == (5, 4)


def test_the_card_is_never_written_over_someone_elses_readme(tmp_path):
    root = tmp_path / "out"
    table = table_of(root, [[ok_row("a.jpg", MASK)]])
    (root / "README.md").write_text("my own notes\n")
    assert not table.write_card(table.pointer())
    assert (root / "README.md").read_text() == "my own notes\n"


def test_a_first_incremental_run_names_its_folder_before_any_file_and_readers_see_an_empty_table(tmp_path):
    from pipeline.output import LabelIdentity

    root = tmp_path / "out"
    root.mkdir()
    table = LabelTable(Location.parse(str(root)), RETRY)
    assert table.pointer() is None and table.current_files() == []
    identity = LabelIdentity(arch="SFP-Tiny-16", weights="random", classes=[["a"], ["b"]])
    table.set_pointer(Pointer(data="data-run9", identity=identity, created_by="run9"))
    (root / "data-run9").mkdir()
    empty = LabelledOutput.open(str(root)).dataset.to_table(columns=["image_id", "status"])
    assert empty.num_rows == 0 and empty.column_names == ["image_id", "status"]


@pytest.mark.parametrize("policy", ["transient", "all"])
def test_relabel_leaves_a_table_without_error_rows_untouched(tmp_path, policy):
    root = tmp_path / "out"
    table = table_of(root, [[ok_row("a.jpg", MASK)]])
    before = (root / "data-run1" / "part-0.parquet").stat().st_mtime_ns
    assert table.drop_rows_to_relabel(policy) == 0
    assert (root / "data-run1" / "part-0.parquet").stat().st_mtime_ns == before
