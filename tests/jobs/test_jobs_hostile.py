"""Hostile job files: each is refused as a JobError (exit 2), in bounded time and memory, never a traceback."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.jobfile import JobError, load_job
from jobs.jobfile.loader import MAX_JOB_FILE_BYTES

SFP_LABEL = str(Path(sys.executable).parent / "sfp-label")
BASE = "input: {uri: images}\noutput: {uri: out}\nmodel: {arch: SFP-Tiny-16, weights: random}\n"
CLASSES = "vocabulary: {classes: [cat, dog]}\n"
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8)
)

TEXT_CASES = {
    "int tag on a word": (BASE + CLASSES + "resources: {batch_size: !!int abc}\n", "tags"),
    "float tag": (BASE + CLASSES + "resources: {gpus_per_actor: !!float x}\n", "tags"),
    "timestamp tag": (BASE + CLASSES + "name: !!timestamp 2026-99-99\n", "tags"),
    "set tag": (BASE + CLASSES + "sfp: !!set {a, b}\n", "tags"),
    "python object tag": (BASE + CLASSES + "name: !!python/object/apply:os.system [echo]\n", "tags"),
    "sequence as a key": (BASE + CLASSES + "? [a, b]\n: c\n", "plain names"),
    "5000-deep nesting": (BASE + CLASSES + "sfp: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper"),
    "alias bomb": (BASE + CLASSES + BOMB, "aliases"),
    "preset that is a number": (BASE + CLASSES + "sfp: {preset: 5}\n", "sfp.preset"),
    "infinite GPUs": (BASE + CLASSES + "resources: {gpus_per_actor: .inf}\n", "resources.gpus_per_actor"),
    "not-a-number retry patience": (
        BASE.replace("output: {uri: out}", "output: {uri: out, storage_retry_s: .nan}") + CLASSES,
        "output.storage_retry_s",
    ),
}


def refused(path: Path, overrides: tuple[str, ...] = ()) -> str:
    start = time.monotonic()
    with pytest.raises(JobError) as info:
        load_job(path, overrides, environ={})
    assert time.monotonic() - start < 5, "refusing took too long"
    return str(info.value)


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_hostile_yaml_is_a_job_error(tmp_path, case):
    text, words = TEXT_CASES[case]
    path = tmp_path / "job.yaml"
    path.write_text(text)
    assert words in refused(path)


def test_files_that_are_not_small_utf8_text(tmp_path):
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes((BASE + CLASSES + "name: caf\xe9\n").encode("latin-1"))
    assert "not UTF-8" in refused(latin)
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes((BASE + CLASSES).encode("utf-16"))
    assert "not UTF-8" in refused(utf16)
    huge = tmp_path / "huge.yaml"
    huge.write_text(BASE + CLASSES + "#" + "x" * MAX_JOB_FILE_BYTES + "\n")
    assert "the limit is" in refused(huge)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert "not a regular file" in refused(fifo)


def test_vocabulary_files_that_would_hang_or_fill_memory(tmp_path):
    fifo = tmp_path / "classes.fifo"
    os.mkfifo(fifo)
    for target, words in ((fifo, "not a regular file"), (Path("/dev/zero"), "not a regular file")):
        path = tmp_path / "job.yaml"
        path.write_text(BASE + f"vocabulary: {{file: '{target}'}}\n")
        message = refused(path)
        assert "vocabulary.file" in message and words in message


def test_set_values_with_tags_are_taken_as_text_or_refused(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(BASE + CLASSES)
    message = refused(path, ("resources.batch_size=!!int abc",))
    assert "resources.batch_size" in message
    job = load_job(path, ("input.uri=!!python/object/apply:os.system [true]",), environ={})
    assert job.spec.input.uri == "!!python/object/apply:os.system [true]"  # taken as text: nothing ran


def test_the_cli_says_it_in_a_few_lines_with_exit_2(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(BASE + CLASSES + BOMB)
    result = subprocess.run([SFP_LABEL, "validate", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "aliases" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 4


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=400))
def test_fuzzed_job_files_are_loaded_or_refused_as_job_errors(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(BASE + CLASSES + text, encoding="utf-8")
    with contextlib.suppress(JobError):  # loaded, or refused as a JobError: anything else fails the test
        load_job(path, environ={})
