"""`sfp-label` through its console script: help, validate, --dry-run, and exit codes that need no model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml
from helpers import ROOT
from PIL import Image

from jobs.cli.exitcodes import ExitCode
from sfp_core import SFPConfig

SFP_LABEL = str(Path(sys.executable).parent / "sfp-label")


def cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env or {})
    return subprocess.run([SFP_LABEL, *args], capture_output=True, text=True, cwd=cwd, env=environ, timeout=300)


def tiny_job(tmp_path: Path, output: Path, extra: str = "") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        textwrap.dedent(f"""
        input: {{uri: {tmp_path / "images"}}}
        output: {{uri: {output}}}
        model: {{arch: SFP-Tiny-16, weights: random}}
        vocabulary: {{classes: [[background, sky], [cat], [dog]]}}
        sfp: {{short_side: 32, long_side: 64, slide_crop: 32, slide_stride: 16}}
        resources: {{actors: 1, batch_size: 2}}
        """)
        + extra
    )
    return path


def test_help_lists_commands_examples_and_exit_codes():
    result = cli("--help")
    assert result.returncode == 0
    for text in ("run", "validate", "show", "export", "examples:", "ray job submit", "exit codes:"):
        assert text in result.stdout
    for code in ExitCode:
        assert f"\n  {code.value:<4} " in result.stdout
    run_help = cli("run", "--help")
    assert "--set" in run_help.stdout and "--dry-run" in run_help.stdout and "exit codes:" in run_help.stdout


def test_usage_errors_exit_2():
    assert cli().returncode == ExitCode.BAD_JOB
    assert cli("frobnicate").returncode == ExitCode.BAD_JOB
    assert cli("run").returncode == ExitCode.BAD_JOB


def test_validate_good_and_bad(tmp_path):
    good = cli("validate", "jobs/demo.yaml", "--set", "model.weights=random")
    assert good.returncode == ExitCode.OK, good.stderr
    assert good.stdout.startswith("ok: job demo: examples/images -> out/demo")
    # This machine has no network and no cached OpenAI weights: validate says so, naming both fixes.
    offline = cli("validate", "jobs/demo.yaml")
    assert offline.returncode == ExitCode.BAD_JOB and "not cached" in offline.stderr
    assert "weights=/path/to/ViT-B-16.pt" in offline.stderr and "weights=random" in offline.stderr
    file_only = cli("validate", "jobs/demo.yaml", "--offline")
    assert file_only.returncode == ExitCode.OK, file_only.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: {uri: x}\noutput: {uri: y, mode: sometimes}\nvocabulary: {classes: [cat]}\n")
    result = cli("validate", str(bad))
    assert result.returncode == ExitCode.BAD_JOB
    assert "output.mode" in result.stderr and "'incremental' or 'overwrite'" in result.stderr
    missing = cli("validate", str(tmp_path / "absent.yaml"))
    assert missing.returncode == ExitCode.BAD_JOB and "cannot read the job file" in missing.stderr


def test_set_errors_name_the_field():
    result = cli("validate", "jobs/demo.yaml", "--set", "resources.actors=[2, 1]", "--set", "sfp.top_k=-1")
    assert result.returncode == ExitCode.BAD_JOB
    assert "resources.actors" in result.stderr


def test_dry_run_prints_the_job_as_it_would_run(tmp_path):
    overrides = ("--set", "output.uri=s3://bucket/labels", "--set", "sfp.top_k=7")
    result = cli("run", "jobs/voc21.yaml", "--dry-run", *overrides)
    assert result.returncode == ExitCode.OK, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["output"]["uri"] == "s3://bucket/labels"
    assert effective["sfp"] == SFPConfig.preset("voc21", top_k=7).to_dict()  # the preset, expanded
    assert effective["vocabulary"] == {"file": "jobs/vocab/voc21.txt"}
    assert not (tmp_path / "labels").exists()


def test_environment_feeds_the_job():
    result = cli(
        "run", "jobs/bucket.yaml", "--dry-run", env={"SFP_INPUT": "s3://in/photos", "SFP_OUTPUT": "s3://out/x"}
    )
    assert result.returncode == ExitCode.OK, result.stderr
    assert yaml.safe_load(result.stdout)["input"]["uri"] == "s3://in/photos"
    unset = cli("run", "jobs/bucket.yaml", "--dry-run")
    assert unset.returncode == ExitCode.BAD_JOB and "SFP_INPUT is not set" in unset.stderr


def test_busy_when_another_run_holds_the_output(tmp_path):
    output = tmp_path / "out"
    (output / "_sfp" / "lease").mkdir(parents=True)
    record = {"holder": "x", "host": "elsewhere", "pid": 1, "job": "nightly", "acquired_at": time.time(),
              "expires_at": time.time() + 600, "released": False}  # fmt: skip
    (output / "_sfp" / "lease" / "000000000001.json").write_text(json.dumps(record))
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")  # an input preflight accepts
    result = cli("run", str(tiny_job(tmp_path, output)))
    assert result.returncode == ExitCode.BUSY
    assert "job 'nightly' on elsewhere" in result.stderr
    assert not (output / "_sfp" / "runs").exists()  # nothing was started


def test_a_bug_exits_4_with_its_traceback(tmp_path, monkeypatch, capsys):
    """Only a bug shows a traceback: an exception outside the project's error classes."""
    import jobs.jobfile.launch
    from jobs.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("an internal invariant broke")

    monkeypatch.setattr(jobs.jobfile.launch, "run_job", broken)
    (tmp_path / "images").mkdir()
    assert main(["run", str(tiny_job(tmp_path, tmp_path / "out")), "--no-progress"]) == ExitCode.CRASH
    err = capsys.readouterr().err
    assert "Traceback" in err and "an internal invariant broke" in err and "crashed (exit 4)" in err
