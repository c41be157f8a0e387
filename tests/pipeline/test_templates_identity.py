"""Prompt templates are part of an output's identity: an incremental run with other templates is refused
like one with another vocabulary, and outputs labelled before templates were a setting still match."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from helpers import ROOT, data_dir, label_request, output_table, run_label

from pipeline import OutputLabelledDifferently
from sfp_core import SFPConfig, Vocabulary
from sfp_core.templates import templates_fingerprint

pytestmark = pytest.mark.timeout(300)

PHOTOS = sorted((ROOT / "examples" / "images").glob("*.jpg"))
TWO = ("a photo of a {}.", "an origami {}.")
RUN = {"vocabulary": Vocabulary([["background"], ["cat"]]), "arch": "SFP-Tiny-16", "weights": "random"}


def settings(templates: str | tuple[str, ...]) -> SFPConfig:
    return SFPConfig(short_side=224, templates=templates)


def test_an_identity_written_before_templates_were_a_setting_still_matches(tmp_path):
    request = label_request(str(tmp_path / "in"), str(tmp_path / "out"), config=SFPConfig(), **RUN)
    now = request.identity()
    before = now.model_copy(update={"config": {k: v for k, v in now.config.items() if k != "templates"}})
    assert now.config["templates"] == "reference"
    assert before.conflict_with(now) is None
    single = label_request(str(tmp_path / "in"), str(tmp_path / "out"), config=SFPConfig(templates="single"), **RUN)
    assert before.conflict_with(single.identity()) == f"prompt templates single ({templates_fingerprint('single')})"


def test_an_incremental_run_with_other_templates_is_refused(ray_local, tmp_path):
    source, output = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    shutil.copy(PHOTOS[0], source)
    run_label(str(source), str(output), mode="incremental", config=settings(TWO), **RUN)
    (path,) = data_dir(output).glob("*.parquet")
    assert json.loads(pq.read_schema(path).metadata[b"sfp_label"])["config"]["templates"] == list(TWO)
    assert "an origami {}." in (output / "README.md").read_text()  # the card's SFP settings

    shutil.copy(PHOTOS[1], source)
    before = sorted(p.relative_to(output) for p in output.rglob("*") if p.is_file())
    shown = f"prompt templates a list of 2 ({templates_fingerprint(TWO)})"
    for other in ("reference", "single", (TWO[0], "a drawing of a {}.")):
        with pytest.raises(OutputLabelledDifferently, match="this run has prompt templates") as refused:
            run_label(str(source), str(output), mode="incremental", config=settings(other), **RUN)
        assert shown in str(refused.value) and templates_fingerprint(other) in str(refused.value)
    assert sorted(p.relative_to(output) for p in output.rglob("*") if p.is_file()) == before  # nothing written

    run_label(str(source), str(output), mode="incremental", config=settings(TWO), **RUN)
    assert output_table(output).num_rows == 2
