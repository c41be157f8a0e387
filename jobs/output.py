"""Read a finished output: its committed Parquet rows and its run manifests.

The committed data is exactly what `pyarrow.dataset` reads under the output
URI (names starting with `_` are staging, manifests and leases, not data).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
from fsspec import AbstractFileSystem

from .storage import open_location

RUNS_DIR = "_runs"
BATCH_ROWS = 1024


class OutputError(ValueError):
    """The URI holds no labelling output (missing, empty, or not ours)."""


@dataclass
class Output:
    """A labelling output: its committed rows and the manifests of the runs that wrote it."""

    uri: str
    dataset: ds.Dataset
    manifests: list[dict[str, Any]]

    @classmethod
    def open(cls, uri: str, storage_options: dict[str, Any] | None = None) -> Output:
        fs, root = open_location(uri, storage_options)
        if not fs.isdir(root):
            raise OutputError(f"{uri}: no such output folder")
        try:
            dataset = ds.dataset(root, filesystem=fs, format="parquet")
        except (pa.ArrowInvalid, OSError) as exc:
            raise OutputError(f"{uri}: not a Parquet output ({exc})") from exc
        return cls(uri, dataset, _manifests(fs, root))

    def batches(self, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
        """Stream the committed rows, only the given columns (masks stay unread unless asked for)."""
        missing = [name for name in columns if name not in self.dataset.schema.names]
        if missing:
            raise OutputError(f"{self.uri}: rows have no column {', '.join(missing)}")
        yield from self.dataset.to_batches(columns=list(columns), batch_size=BATCH_ROWS)

    def class_names(self) -> list[str] | None:
        """Display names of the classes (index = mask value), from the newest run's manifest."""
        for manifest in reversed(self.manifests):
            classes = (manifest.get("vocabulary") or {}).get("classes")
            if classes:
                return [str(names[0]) for names in classes]
        return None


def _manifests(fs: AbstractFileSystem, root: str) -> list[dict[str, Any]]:
    """Every run manifest, oldest first; unreadable ones are skipped (a run may be writing one)."""
    directory = f"{root}/{RUNS_DIR}"
    if not fs.isdir(directory):
        return []
    found = []
    for path in sorted(fs.ls(directory, detail=False)):
        if not path.endswith(".json"):
            continue
        try:
            found.append(json.loads(fs.cat_file(path)))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda manifest: str(manifest.get("started_at", "")))
