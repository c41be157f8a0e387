"""Per-run records: the typed manifest under `_sfp/runs/` (written and read by this class only), and the
`RunSummary` that `label` returns."""

from __future__ import annotations

import importlib.metadata
import platform
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..retry import Retry
from ..storage import Location, Redactor
from .layout import MANIFEST_SUFFIX, manifest_path, replace_file, runs_dir

RUN_RUNNING = "running"
RUN_SUCCEEDED = "succeeded"
RUN_FAILED = "failed"
RUN_ABANDONED = "abandoned"  # shown, never written: "running" in its manifest, but no run holds the lease
_PACKAGES = ("sfp-label", "torch", "open_clip_torch", "ray", "pyarrow", "pillow", "numpy")


class _Record(BaseModel):
    """Manifests written by older versions lack newer fields: every field has a default, unknown ones pass."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class InputRecord(_Record):
    uri: str = ""
    format: str = "files"
    storage_options: dict[str, Any] = Field(default_factory=dict)  # credentials already redacted
    extensions: list[str] = Field(default_factory=list)
    fields: dict[str, str] = Field(default_factory=dict)


class OutputRecord(_Record):
    uri: str = ""
    storage_options: dict[str, Any] = Field(default_factory=dict)
    mode: str = ""
    confidence: bool = False
    rows_per_file: int | None = None


class ModelRecord(_Record):
    arch: str = ""
    weights: str = ""  # a public URI: never user info or query strings
    weights_sha256: str | None = None


class VocabularyRecord(_Record):
    classes: list[list[str]] = Field(default_factory=list)
    fingerprint: str | None = None


class ResourcesRecord(_Record):
    actors: list[int] = Field(default_factory=list)
    gpus_per_actor: float = 0.0
    batch_size: int | None = None


class RunCounts(_Record):
    ok: int = 0
    error: int = 0
    skipped: int = 0
    total: int = 0


class Manifest(_Record):
    """What one run set out to do and what it did; `_sfp/runs/<run_id>.json`."""

    run_id: str = ""
    run_name: str | None = None
    status: str = RUN_RUNNING
    started_at: str = ""
    ended_at: str | None = None
    input: InputRecord = Field(default_factory=InputRecord)
    output: OutputRecord = Field(default_factory=OutputRecord)
    model: ModelRecord = Field(default_factory=ModelRecord)
    vocabulary: VocabularyRecord = Field(default_factory=VocabularyRecord)
    config: dict[str, Any] = Field(default_factory=dict)
    config_hash: str | None = None
    resources: ResourcesRecord = Field(default_factory=ResourcesRecord)
    max_pixels: int | None = None
    versions: dict[str, str | None] = Field(default_factory=dict)
    counts: RunCounts | None = None
    seconds: float | None = None
    images_per_second: float | None = None
    files: list[str] = Field(default_factory=list)  # data files this run added, relative to the output
    error: str | None = None

    def shown_status(self, writing_job: str | None) -> str:
        """The status to show: a "running" run whose job does not hold the output's lease died unrecorded."""
        if self.status == RUN_RUNNING and writing_job not in (self.run_name or self.run_id, self.run_id):
            return RUN_ABANDONED
        return self.status

    @property
    def class_names(self) -> list[str]:
        """Display names of the classes (index = mask value); empty when the manifest names none."""
        return [str(names[0]) for names in self.vocabulary.classes if names]

    def succeeded(self, summary: RunSummary, ended_at: float) -> Manifest:
        counts = RunCounts(ok=summary.ok, error=summary.error, skipped=summary.skipped, total=summary.total)
        return self.model_copy(
            update={
                "status": RUN_SUCCEEDED,
                "ended_at": iso(ended_at),
                "counts": counts,
                "seconds": summary.seconds,
                "images_per_second": summary.images_per_second,
                "files": list(summary.files),
            }
        )

    def failed(self, error: str, files: list[str], ended_at: float) -> Manifest:
        return self.model_copy(update={"status": RUN_FAILED, "ended_at": iso(ended_at), "error": error, "files": files})

    def write(self, output: Location, redact: Redactor, retry: Retry) -> None:
        """Write (or replace) `_sfp/runs/<run_id>.json` whole."""
        replace_file(output, manifest_path(output, self.run_id), redact(self.model_dump_json(indent=2)).encode(), retry)

    @classmethod
    def read_all(cls, output: Location, retry: Retry) -> list[Manifest]:
        """Every run's manifest, oldest first; unreadable ones are skipped (a run may be writing one)."""
        fs = output.filesystem()
        selector = pafs.FileSelector(runs_dir(output), allow_not_found=True)
        entries = retry.call(f"listing {output.uri_of(runs_dir(output))}", lambda: fs.get_file_info(selector))
        found = []
        for entry in sorted(entries, key=lambda e: e.path):
            if entry.type != pafs.FileType.File or not entry.path.endswith(MANIFEST_SUFFIX):
                continue
            try:
                with fs.open_input_stream(entry.path) as stream:
                    found.append(cls.model_validate_json(stream.read()))
            except (OSError, ValueError, ValidationError):
                continue
        return sorted(found, key=lambda manifest: manifest.started_at)


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
