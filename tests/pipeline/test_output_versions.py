"""The output's versions without Ray: what the pointer names, what `tidy` may delete, expiry of replaced
folders, and a damaged pointer refused before it can cost data (docs/design.md, "Output layout")."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import data_dir, ok_row, write_output

from pipeline.output import KEEP_REPLACED_S, LabelTable, PointerDamaged, checked_pointer
from pipeline.retry import Retry
from pipeline.storage import Location

RETRY = Retry(patience_s=5)


def output_with_data(root: Path) -> Location:
    """An output as a finished run leaves it: data-run1 with one file, the pointer, a succeeded manifest."""
    write_output(root, [[ok_row("a.jpg", np.zeros((2, 2), np.uint8))]])
    manifest = root / "_sfp" / "runs" / "run1.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "status": "succeeded"}))
    return Location.parse(str(root))


def edit_pointer(root: Path, **changes) -> None:
    path = root / "_sfp" / "current.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_pointer_naming_a_missing_folder_is_refused_and_nothing_is_deleted(tmp_path):
    output = output_with_data(tmp_path / "out")
    edit_pointer(tmp_path / "out", data="data-typo")
    with pytest.raises(PointerDamaged, match=r"names data-typo, which is not there \(data folders: data-run1\)"):
        checked_pointer(output, RETRY)
    assert list((tmp_path / "out" / "data-run1").glob("*.parquet"))


def test_a_pointer_listing_its_own_folder_as_replaced_is_refused(tmp_path):
    output = output_with_data(tmp_path / "out")
    edit_pointer(tmp_path / "out", replaced=[{"folder": "data-run1", "replaced_at": 0}])
    with pytest.raises(PointerDamaged, match="lists its own data folder data-run1 as replaced"):
        checked_pointer(output, RETRY)


def test_a_missing_pointer_over_a_succeeded_run_is_refused_but_a_dead_overwrite_is_tidied(tmp_path):
    output = output_with_data(tmp_path / "out")
    (tmp_path / "out" / "_sfp" / "current.json").unlink()
    with pytest.raises(PointerDamaged, match="is missing while data-run1 holds rows of runs that succeeded"):
        checked_pointer(output, RETRY)

    fresh = tmp_path / "fresh"  # an overwrite that died before its first flip: no pointer, no succeeded run
    (fresh / "data-dead").mkdir(parents=True)
    (fresh / "data-dead" / "part-dead-000000.parquet").write_bytes(b"PAR1")
    location = Location.parse(str(fresh))
    table = LabelTable(location, RETRY)
    assert table.tidy(table.pointer()) is None
    assert not (fresh / "data-dead").exists()


def test_tidy_removes_dead_runs_leftovers_and_expired_folders_only(tmp_path):
    root = tmp_path / "out"
    output = output_with_data(root)
    old, recent, dead = root / "data-old", root / "data-recent", root / "data-dead"
    for folder in (old, recent, dead):
        folder.mkdir()
        (folder / "part-x-000000.parquet").write_bytes(b"PAR1")
    (root / "_sfp" / "staging" / "deadrun").mkdir(parents=True)
    (root / "_sfp" / "staging" / "deadrun" / "part-1.parquet").write_bytes(b"PAR1")
    now = time.time()
    replaced = [
        {"folder": "data-old", "replaced_at": now - KEEP_REPLACED_S - 1},
        {"folder": "data-recent", "replaced_at": now - 10},
    ]
    edit_pointer(root, replaced=replaced)
    table = LabelTable(output, RETRY)
    kept = table.tidy(table.pointer())
    assert [r.folder for r in kept.replaced] == ["data-recent"]  # the pointer stops naming what goes
    assert not old.exists() and not dead.exists() and recent.exists()
    assert data_dir(root).name == "data-run1" and not (root / "_sfp" / "staging").exists()
    assert [r["folder"] for r in json.loads((root / "_sfp" / "current.json").read_text())["replaced"]] == [
        "data-recent"
    ]


def test_sfp_label_refuses_a_damaged_pointer_in_one_line_before_anything_starts(tmp_path):
    output_with_data(tmp_path / "out")
    edit_pointer(tmp_path / "out", data="data-typo")
    (tmp_path / "in").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    job = tmp_path / "job.yaml"
    job.write_text(
        textwrap.dedent(f"""
        input: {{uri: '{tmp_path / "in"}'}}
        output: {{uri: '{tmp_path / "out"}'}}
        model: {{arch: SFP-Tiny-16, weights: random}}
        vocabulary: {{classes: [background, cat]}}
        """)
    )
    done = subprocess.run(
        [str(Path(sys.executable).parent / "sfp-label"), "run", str(job)], capture_output=True, text=True, timeout=120
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) <= 2 and "data-typo" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert list((tmp_path / "out" / "data-run1").glob("*.parquet"))  # nothing deleted


def test_upgrade_keeps_one_row_per_image_and_refuses_what_it_cannot_move(tmp_path, capsys):
    """A current data file copied to the root (as an old layout would have it) does not double any image; a
    damaged root file, a root file labelled otherwise, or `_runs` as a file stop it in one line, before
    anything moves."""
    import shutil

    import pyarrow.parquet as pq

    from jobs.cli import main

    root = tmp_path / "out"
    write_output(root, [[ok_row(n, np.zeros((2, 2), np.uint8)) for n in ("a.jpg", "b.jpg")]])
    shutil.copy(next((root / "data-run1").glob("*.parquet")), root / "part-copied.parquet")
    assert main(["upgrade", str(root)]) == 0
    assert "2 rows of images it already held were left out" in capsys.readouterr().out
    ids = [i for p in data_dir(root).glob("*.parquet") for i in pq.read_table(p).column("image_id").to_pylist()]
    assert sorted(ids) == ["a.jpg", "b.jpg"] and not (root / "part-copied.parquet").exists()

    def refused(folder: Path, words: str) -> None:
        assert main(["upgrade", str(folder)]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) <= 2 and words in "\n".join(err), err
        assert not (folder / "_sfp" / "current.json").exists()  # no pointer to a folder nothing was moved into

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "part-0.parquet").write_bytes(b"not parquet at all")
    refused(damaged, "part-0.parquet is not a readable Parquet file")

    runs_file = tmp_path / "runs-file"
    runs_file.mkdir()
    shutil.copy(next((root / data_dir(root).name).glob("*.parquet")), runs_file / "part-0.parquet")
    (runs_file / "_runs").write_text("not a folder")
    refused(runs_file, "_runs is a file")


def test_the_card_shows_class_names_as_text_not_html(tmp_path):
    """A class name holding HTML or a table bar is shown as written, escaped; the header keeps it raw."""
    from pipeline.output import Pointer, write_card

    root = write_output(tmp_path / "out", [[ok_row("a.jpg", np.zeros((2, 2), np.uint8))]], ["bg", "<b>x</b>|y"])
    output = Location.parse(str(root))
    write_card(output, Pointer.read(output, RETRY), 1, RETRY)
    body = (root / "README.md").read_text().split("\n---\n", 1)[1]
    assert "| 1 | &lt;b&gt;x&lt;/b&gt;\\|y |" in body and "<b>" not in body
