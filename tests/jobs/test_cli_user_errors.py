"""The user's mistakes through the real `sfp-label` entry point: exit 2, at most two lines naming the thing,
found by preflight before Ray starts, and nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from jobs.cli.exitcodes import ExitCode
from jobs.jobfile.placement import SUBMITTED_JOB_ENV

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


# `sfp-label`'s own entry point, then whether Ray was started (it must not be, for a refused job).
ENTRY = (
    "import sys, ray; from jobs.cli import main; code = main(sys.argv[1:]); "
    "print('ray:', ray.is_initialized()); sys.exit(code)"
)


def run(job: Path, env: dict[str, str] | None = None, cwd: Path | None = None, command: str = "run"):
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env or {})
    return subprocess.run(
        [sys.executable, "-c", ENTRY, command, str(job)], capture_output=True, text=True, env=environ, timeout=300,
        cwd=cwd,
    )  # fmt: skip


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
    "empty input": ({"input_uri": "{tmp}/empty"}, ["input", "holds no images", "holds no files", "allow_empty"]),
    "extensions match nothing": (
        {"input_uri": "{tmp}/pngs", "extra": "  extensions: [jpg]\n"},
        ["extensions jpg", "3 other files (3 .png)", "input.extensions"],
    ),
    "relative output under ray job submit": (
        {"output_uri": "out/labels", "env": "submitted"},
        ["output.uri", "relative", "ray job submit", "absolute path"],
    ),
    # Ray would wait for the GPU forever, in silence; a local Ray's node is all there will ever be.
    "a GPU on a machine without one": (
        {"tail": "resources: {gpus_per_actor: 1}\n", "env": "no GPU"},
        ["resources.gpus_per_actor", "1 GPU", "CPU", "GPU 0", "gpus_per_actor: 0"],
    ),
    # Retried for output.storage_retry_s (120 s) before exit 4, when it is a typo.
    "a storage endpoint that does not resolve": (
        {"output_uri": "s3://bucket/x", "output_options": "{endpoint_url: 'http://no-such-host.invalid:8333'}"},
        ["output", "no-such-host.invalid:8333", "does not resolve", "endpoint_url"],
    ),
}
ENVIRONMENTS = {"submitted": {SUBMITTED_JOB_ENV: "{}"}, "no GPU": {"CUDA_VISIBLE_DEVICES": ""}}


@pytest.mark.parametrize("case", list(CASES))
def test_user_mistakes_exit_2_in_at_most_two_lines(tmp_path, case):
    for folder in ("images", "empty", "pngs"):
        (tmp_path / folder).mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.JPG")  # extensions match in any case
    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 8)).save(tmp_path / "pngs" / f"{name}.png")
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "empty.txt").write_text("\n\n")
    keys = {"input_uri": f"{tmp_path}/images", "output_uri": f"{tmp_path}/out", "model": TINY, "vocabulary": CLASSES}
    changes, words = CASES[case]
    keys.update({name: value.replace("{tmp}", str(tmp_path)) for name, value in changes.items()})
    env = ENVIRONMENTS.get(keys.pop("env", ""))
    extra, output_options, tail = keys.pop("extra", ""), keys.pop("output_options", "{}"), keys.pop("tail", "")
    job = job_file(tmp_path, **keys, extra=tail)
    job.write_text(
        job.read_text()
        .replace(f"input: {{uri: '{keys['input_uri']}'}}", f"input:\n  uri: '{keys['input_uri']}'\n{extra}")
        .replace("output: {uri: ", f"output: {{storage_options: {output_options}, uri: ")
    )
    started = time.monotonic()
    result = run(job, env=env, cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == ExitCode.BAD_JOB, result.stderr[-3000:]
    assert 1 <= len(lines) <= 2, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 90  # found at once: not after a retry window (120 s), nor never
    assert not (tmp_path / "out").exists()  # refused before anything was written
    assert "ray: False" in result.stdout  # found before Ray started


def test_a_good_job_passes_preflight_and_validate_checks_what_it_names(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.webp")  # a default extension
    keys = {"input_uri": f"{tmp_path}/images", "output_uri": f"{tmp_path}/out", "model": TINY, "vocabulary": CLASSES}
    good = run(job_file(tmp_path, **keys), command="validate")
    assert good.returncode == ExitCode.OK and "ray: False" in good.stdout, good.stderr
    keys["input_uri"] = f"{tmp_path}/missing"
    bad = run(job_file(tmp_path, **keys), command="validate")
    assert bad.returncode == ExitCode.BAD_JOB and "does not exist" in bad.stderr
    offline = subprocess.run(
        [SFP_LABEL, "validate", str(tmp_path / "job.yaml"), "--offline"], capture_output=True, text=True, timeout=120
    )
    assert offline.returncode == ExitCode.OK and "--offline" in offline.stdout, offline.stderr
    assert not (tmp_path / "out").exists()


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
