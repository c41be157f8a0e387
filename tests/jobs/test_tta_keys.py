"""`sfp.flip` and `sfp.scales` in job files and `--set`: accepted into the settings (and their hash),
refused values named by their dotted field, exit 2 through the real `sfp-label`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from jobs.cli.exitcodes import ExitCode
from jobs.jobfile import JobError, load_job
from sfp_core import SFPConfig

SFP_LABEL = str(Path(sys.executable).parent / "sfp-label")
BASE = """
input: {uri: images}
output: {uri: out}
model: {arch: SFP-Tiny-16, weights: random}
vocabulary: {classes: [[background, sky], [cat]]}
"""


def load(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()):
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(text))
    return load_job(path, overrides, environ={})


def test_tta_keys_in_a_job_file(tmp_path):
    job = load(tmp_path, BASE + "sfp: {preset: voc21, flip: true, scales: [1.25, 1.0, 0.75]}")
    assert job.config == SFPConfig.preset("voc21", flip=True, scales=(0.75, 1.0, 1.25))
    assert job.effective()["sfp"]["flip"] is True and job.effective()["sfp"]["scales"] == [0.75, 1.0, 1.25]
    assert job.config.config_hash() != SFPConfig.preset("voc21").config_hash()


def test_tta_keys_by_set(tmp_path):
    job = load(tmp_path, BASE, ("sfp.flip=true", "sfp.scales=[1.0, 1.5]"))
    assert (job.config.flip, job.config.scales) == (True, (1.0, 1.5))
    plain = load(tmp_path, BASE, ("sfp.flip=false", "sfp.scales=[1]"))
    assert plain.config.config_hash() == SFPConfig().config_hash()  # the defaults written out change nothing


@pytest.mark.parametrize(
    "override,field,detail",
    [
        ("sfp.flip=sometimes", "sfp.flip", "valid boolean"),
        ("sfp.scales=[]", "sfp.scales", "non-empty list of short-side factors"),
        ("sfp.scales=1.5", "sfp.scales", "non-empty list of short-side factors"),
        ("sfp.scales=[1.0, 10]", "sfp.scales", "must lie in 0.25..4.0, got 10.0"),
        ("sfp.scales=[0.5, 1.5]", "sfp.scales", "must include 1.0"),
        ("sfp.scales=[1, 1.0]", "sfp.scales", "must not repeat a factor"),
    ],
)
def test_refused_tta_values_name_their_field(tmp_path, override, field, detail):
    with pytest.raises(JobError) as refused:
        load(tmp_path, BASE, (override,))
    assert f"{field}: " in str(refused.value) and detail in str(refused.value)


def test_a_refused_tta_value_is_exit_2_in_one_or_two_lines(tmp_path):
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    base = [SFP_LABEL, "validate", "jobs/demo.yaml", "--offline"]
    result = subprocess.run(
        [*base, "--set", "sfp.scales=[0.5, 2]"], capture_output=True, text=True, cwd=ROOT, env=environ, timeout=300
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == ExitCode.BAD_JOB, result.stderr[-3000:]
    assert 1 <= len(lines) <= 2 and "sfp.scales" in result.stderr and "must include 1.0" in result.stderr
    assert "Traceback" not in result.stderr
    dry = subprocess.run(
        [SFP_LABEL, "run", "jobs/demo.yaml", "--dry-run", "--set", "sfp.flip=true", "--set", "sfp.scales=[1, 0.5]"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environ,
        timeout=300,
    )
    assert dry.returncode == ExitCode.OK, dry.stderr[-3000:]
    effective = yaml.safe_load(dry.stdout)["sfp"]
    assert (effective["flip"], effective["scales"]) == (True, [0.5, 1.0])
