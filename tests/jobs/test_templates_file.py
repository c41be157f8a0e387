"""`sfp.templates` naming a file, through the real `sfp-label`: read when the job is resolved (relative to
the working directory, like a vocabulary file) into the settings as data; a bad file is exit 2 in one or
two lines naming the file and the line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from PIL import Image

from jobs.cli.exitcodes import ExitCode
from sfp_core.templates import MAX_TEMPLATES_FILE_BYTES

SFP_LABEL = str(Path(sys.executable).parent / "sfp-label")


def job(tmp_path: Path, templates: str) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.jpg")
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(f"""
        input: {{uri: '{tmp_path}/images'}}
        output: {{uri: '{tmp_path}/out'}}
        model: {{arch: SFP-Tiny-16, weights: random}}
        vocabulary: {{classes: [cat, dog]}}
        sfp: {{templates: '{templates}'}}
        """)
    )
    return path


def sfp_label(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SFP_LABEL, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


# case -> (the file's bytes, the words the message must hold besides the file's name)
BAD = {
    "no {}": (b"a photo of a {}.\na photo\n", ["line 2", "has 0 {}"]),
    "two {}": (b"a photo of a {}.\n\na {} next to a {}\n", ["line 3", "has 2 {}"]),
    "empty": (b"\n \n", ["is empty"]),
    "not UTF-8": (b"a photo of a \xe9t\xe9 {}.\n", ["not UTF-8"]),
    "over the limit": (b"a photo of a {}.\n" * (MAX_TEMPLATES_FILE_BYTES // 17 + 1), ["the limit is"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_templates_file_is_exit_2_naming_the_file_and_line(tmp_path, case):
    content, words = BAD[case]
    (tmp_path / "prompts.txt").write_bytes(content)
    result = sfp_label("validate", str(job(tmp_path, "prompts.txt")), cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == ExitCode.BAD_JOB, result.stderr[-3000:]
    assert 1 <= len(lines) <= 2, result.stderr
    for word in ["sfp.templates", "prompts.txt", *words]:
        assert word in result.stderr, (word, result.stderr)
    assert "Traceback" not in result.stderr


def test_a_missing_templates_file_is_exit_2(tmp_path):
    result = sfp_label("validate", str(job(tmp_path, "no-such-prompts.txt")), "--offline", cwd=tmp_path)
    assert result.returncode == ExitCode.BAD_JOB, result.stderr[-3000:]
    assert "sfp.templates: cannot read templates file no-such-prompts.txt" in result.stderr


def test_a_templates_file_becomes_the_settings_templates(tmp_path):
    (tmp_path / "prompts.txt").write_text("a photo of a {}.\nan origami {}.\n", encoding="utf-8")
    path = job(tmp_path, "prompts.txt")
    result = sfp_label("run", str(path), "--dry-run", cwd=tmp_path)
    assert result.returncode == ExitCode.OK, result.stderr[-3000:]
    effective = yaml.safe_load(result.stdout)
    assert effective["sfp"]["templates"] == ["a photo of a {}.", "an origami {}."]
    named = sfp_label("run", str(path), "--dry-run", "--set", "sfp.templates=single", cwd=tmp_path)
    assert yaml.safe_load(named.stdout)["sfp"]["templates"] == "single", named.stderr[-3000:]
