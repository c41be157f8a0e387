"""Secrets passed through the Python API never reach a written file or a log line (one rule set: pipeline.secrets)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from helpers import run_label
from PIL import Image

from pipeline import RunDisplay, find_secrets
from sfp_core import SFPConfig, Vocabulary

SECRET_NAMES = [
    "key", "secret", "token", "password", "passwd", "pwd", "passphrase", "access_key_id", "aws_access_key_id",
    "aws_secret_access_key", "client_secret", "api_key", "apikey", "connection_string", "account_key",
    "sas_token", "private_key", "credentials", "signature", "session_token", "refresh_token",
]  # fmt: skip


def markers(prefix: str) -> dict[str, str]:
    return {name: f"{prefix}{index:03d}xyzzy" for index, name in enumerate(SECRET_NAMES)}


def test_every_secret_option_name_is_refused_in_job_files():
    fields = {field for field, _ in find_secrets({"storage_options": markers("m")})}
    assert fields == {f"storage_options.{name}" for name in SECRET_NAMES}


def test_no_written_file_or_log_line_holds_a_secret_option(ray_local, tmp_path, caplog, capsys):
    source, output = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    Image.fromarray(np.full((40, 48, 3), 120, np.uint8)).save(source / "a.png")
    caplog.set_level(logging.DEBUG)
    summary = run_label(
        str(source),
        str(output),
        vocabulary=Vocabulary([["background"], ["cat"]]),
        arch="SFP-Tiny-16",
        weights="random",
        config=SFPConfig(short_side=32, long_side=64, slide_crop=32, slide_stride=16),
        input_storage_options={**markers("in"), "nested": {"client_kwargs": markers("nest")}},
        output_storage_options=markers("out"),
        weights_storage_options=markers("w"),
        display=RunDisplay(ray_progress=True, verbose=True),  # every log line Ray can print
    )
    assert summary.ok == 1
    written = [path for path in Path(output).rglob("*") if path.is_file()]
    assert any(path.suffix == ".json" for path in written)  # the manifest records the (redacted) options
    for path in written:
        assert b"xyzzy" not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert "xyzzy" not in caplog.text and "xyzzy" not in captured.out and "xyzzy" not in captured.err
