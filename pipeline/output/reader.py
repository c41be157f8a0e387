"""Read a finished output: its committed Parquet rows and its run manifests, through the layout's rules.

The committed data is exactly the files `layout.data_files` lists; staging,
manifests and leases are never read as rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from sfp_core import UserError

from ..retry import Retry
from ..storage import Location
from .layout import data_files
from .manifest import Manifest

BATCH_ROWS = 1024


class OutputError(UserError, ValueError):
    """The URI holds no labelling output (missing, empty, or not ours)."""


@dataclass
class LabelledOutput:
    """A labelling output: its committed rows and the manifests of the runs that wrote it."""

    uri: str
    location: Location
    dataset: ds.Dataset
    manifests: list[Manifest]

    @classmethod
    def open(
        cls, uri: str, storage_options: dict[str, Any] | None = None, retry: Retry | None = None
    ) -> LabelledOutput:
        retry = retry or Retry()
        location = Location.parse(uri, storage_options)
        fs = location.filesystem()
        info = retry.call(f"opening {location.uri}", lambda: fs.get_file_info(location.path))
        if info.type != pafs.FileType.Directory:
            raise OutputError(f"{uri}: no such output folder")
        try:
            dataset = ds.dataset(data_files(location, retry), filesystem=fs, format="parquet")
        except (pa.ArrowInvalid, OSError) as exc:
            raise OutputError(f"{uri}: not a Parquet output ({exc})") from exc
        return cls(uri, location, dataset, Manifest.read_all(location, retry))

    def batches(self, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
        """Stream the committed rows, only the given columns (masks stay unread unless asked for)."""
        missing = [name for name in columns if name not in self.dataset.schema.names]
        if missing and self.dataset.files:
            raise OutputError(f"{self.uri}: rows have no column {', '.join(missing)}")
        if not self.dataset.files:
            return
        yield from self.dataset.to_batches(columns=list(columns), batch_size=BATCH_ROWS)

    def writing_job(self) -> str | None:
        """The job name of the run writing this output right now (its live lease), or None."""
        from ..lease import live_lease  # the lease sits above the output format

        record = live_lease(self.location, Retry(patience_s=10))
        return record.job if record else None

    def class_names(self) -> list[str] | None:
        """Display names of the classes (index = mask value), from the newest manifest that names them."""
        for manifest in reversed(self.manifests):
            if manifest.class_names:
                return manifest.class_names
        return None
