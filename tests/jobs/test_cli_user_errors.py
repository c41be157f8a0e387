"""The user's mistakes through the real `sfp-label` entry point: exit 2, at most two lines naming the thing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jobs.cli.exitcodes import ExitCode

SFP_LABEL = str(Path(sys.executable).parent / "sfp-label")


def job_file(tmp_path: Path, *, input_uri: str, output_uri: str, model: str, vocabulary: str, extra: str = "") -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(f"""
        input: {{uri: '{input_uri}'}}
        output: {{uri: '{output_uri}'}}
        model: {model}
        vocabulary: {vocabulary}
        """)
        + extra
    )
    return path


def run(job: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env or {})
    return subprocess.run(
        [SFP_LABEL, "run", str(job), "--no-progress"], capture_output=True, text=True, env=environ, timeout=300
    )


TINY = "{arch: SFP-Tiny-16, weights: random}"
CLASSES = "{classes: [cat, dog]}"

# case -> (job keys to change, the words the message must hold)
CASES = {
    "missing input": ({"input_uri": "{tmp}/no-such-folder"}, ["input", "no-such-folder", "does not exist"]),
    "missing weights file": (
        {"model": "{arch: SFP-Tiny-16, weights: /nowhere/clip.pt}"},
        ["weights", "/nowhere/clip.pt", "does not exist"],
    ),
    "weights are a directory": ({"model": "{arch: SFP-Tiny-16, weights: '{tmp}'}"}, ["weights", "is a directory"]),
    "output is a file": ({"output_uri": "{tmp}/a-file"}, ["output", "a-file", "is a file"]),
    "empty vocabulary": ({"vocabulary": "{file: '{tmp}/empty.txt'}"}, ["vocabulary", "empty"]),
    "unknown arch": ({"model": "{arch: ViT-Nope-99, weights: random}"}, ["model.arch", "ViT-Nope-99"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_mistakes_exit_2_in_at_most_two_lines(tmp_path, case):
    (tmp_path / "images").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "empty.txt").write_text("\n\n")
    keys = {"input_uri": f"{tmp_path}/images", "output_uri": f"{tmp_path}/out", "model": TINY, "vocabulary": CLASSES}
    changes, words = CASES[case]
    keys.update({name: value.replace("{tmp}", str(tmp_path)) for name, value in changes.items()})
    result = run(job_file(tmp_path, **keys))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == ExitCode.BAD_JOB, result.stderr[-3000:]
    assert 1 <= len(lines) <= 2, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_wrong_credentials_exit_2_and_never_show_the_secret(tmp_path, s3_server):
    keys = {
        "input_uri": "s3://sfp-wrong-credentials/in",
        "output_uri": "s3://sfp-wrong-credentials/out",
        "model": TINY,
        "vocabulary": CLASSES,
    }
    options = f"{{endpoint_url: '{s3_server.endpoint_url}', region: us-east-1}}"
    job = (
        job_file(tmp_path, **keys)
        .read_text()
        .replace(
            "input: {uri: 's3://sfp-wrong-credentials/in'}",
            f"input: {{uri: 's3://sfp-wrong-credentials/in', storage_options: {options}}}",
        )
    )
    job = job.replace(
        "output: {uri: 's3://sfp-wrong-credentials/out'}",
        f"output: {{uri: 's3://sfp-wrong-credentials/out', storage_options: {options}}}",
    )
    (tmp_path / "job.yaml").write_text(job)
    wrong = {"AWS_ACCESS_KEY_ID": "SFPWRONGKEY1234", "AWS_SECRET_ACCESS_KEY": "not-the-secret-at-all-4242"}
    result = run(tmp_path / "job.yaml", env=wrong)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == ExitCode.BAD_JOB, result.stderr[-3000:]
    assert 1 <= len(lines) <= 2, result.stderr
    assert "access denied" in result.stderr.lower() and "credentials" in result.stderr
    assert "not-the-secret-at-all-4242" not in result.stderr
