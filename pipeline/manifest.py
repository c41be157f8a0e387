"""Per-run records: the JSON manifest under `_runs/` and the `RunSummary` that `label` returns."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import posixpath
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from .retry import Retry
from .storage import Location, Redactor

RUNS = "_runs"
_PACKAGES = ("sfp-label", "torch", "open_clip_torch", "ray", "pyarrow", "pillow", "numpy")


@dataclass(frozen=True)
class RunSummary:
    """What one `label` run did. URIs never carry credentials."""

    run_id: str
    run_name: str | None
    input_uri: str
    output_uri: str
    mode: str
    ok: int  # rows written with a mask
    error: int  # rows written with a reason instead
    skipped: int  # inputs already in the output (incremental)
    total: int  # inputs found: ok + error + skipped
    seconds: float
    images_per_second: float  # (ok + error) / seconds, start to end of the run
    manifest_uri: str
    config_hash: str
    files: tuple[str, ...]  # data files this run added, relative to the output

    def one_line(self) -> str:
        return (
            f"run {self.run_id}: {self.ok} ok, {self.error} error, {self.skipped} skipped of {self.total} images "
            f"in {self.seconds:.1f}s ({self.images_per_second:.2f} images/s) -> {self.output_uri}"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = list(self.files)
        return data


def new_run_id() -> str:
    """Sortable and unique: UTC start time plus random hex, e.g. 20260125T031500Z-1a2b3c4d."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"


def iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def manifest_path(output: Location, run_id: str) -> str:
    return output.join(RUNS, f"{run_id}.json")


def write_manifest(output: Location, run_id: str, manifest: dict[str, Any], redact: Redactor, retry: Retry) -> None:
    """Write (or replace) `_runs/<run_id>.json` whole: staged beside it, then moved into place."""
    fs = output.filesystem()
    final = manifest_path(output, run_id)
    partial = f"{final}.partial"
    data = redact(json.dumps(manifest, indent=2, default=str)).encode()

    def write() -> None:
        fs.create_dir(posixpath.dirname(final), recursive=True)
        with fs.open_output_stream(partial) as stream:
            stream.write(data)
        fs.move(partial, final)

    retry.call(f"writing {output.uri_of(final)}", write)
