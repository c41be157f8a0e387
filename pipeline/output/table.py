"""`LabelTable`: the output as one table, and the one owner of how it lies on storage.

Everything outside `output/` that reads or changes an output goes through a
`LabelTable`: which version is current (the pointer), its data files, the
ids it holds, the one Parquet write recipe, the commits (add files to the
current version, replace the version, drop rows to relabel), tidying what
dead runs left, and the card. The modules beside it do the work
(`versions`, `layout`, `parts`, `commits`, `relabel`, `card`); this class
carries the output and its retry policy, so callers pass one object instead
of an `(output, retry)` pair. The lease that guards writers stays outside:
it is the run's, not the table's (docs/design.md, "Output layout").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.dataset as pads

from ..retry import Retry
from ..storage import Location
from . import commits
from .card import FileCount, FolderCounts, card_is_current, counted_files, is_our_card, write_card
from .layout import folder_files, legacy_files, relative_path
from .manifest import RUN_SUCCEEDED, Manifest
from .parts import write_parquet
from .relabel import drop_rows_to_relabel
from .versions import Pointer, checked_pointer, current_files


@dataclass(frozen=True)
class LabelTable:
    """One output (`location`), every storage call retried by `retry`."""

    location: Location
    retry: Retry = field(default_factory=Retry)

    @property
    def uri(self) -> str:
        return self.location.uri

    def briefly(self) -> LabelTable:
        """The same table with at most a few seconds of patience: for clean-up after a run failed."""
        return LabelTable(self.location, self.retry.brief())

    # --- versions ---------------------------------------------------------------------------------------

    def pointer(self) -> Pointer | None:
        """The current version; `PointerDamaged` (a user error) for one naming a missing folder, since a
        run deletes the folders the pointer does not name."""
        return checked_pointer(self.location, self.retry)

    def pointer_as_written(self) -> Pointer | None:
        """The pointer as it stands, unchecked: after this run's own writes, or to report on it."""
        return Pointer.read(self.location, self.retry)

    def set_pointer(self, pointer: Pointer) -> None:
        """Name `pointer`'s folder as the current version (one atomic write)."""
        pointer.write(self.location, self.retry)

    def replace_version(self, current: Pointer) -> None:
        """An overwrite's commit: flip the pointer to the run's folder (`commits.commit_overwrite`)."""
        commits.commit_overwrite(self.location, current, self.retry)

    # --- files and rows ---------------------------------------------------------------------------------

    def current_files(self) -> list[str]:
        """The data files of the current version (paths in the output's filesystem)."""
        return current_files(self.location, self.retry)

    def files_of(self, pointer: Pointer) -> list[str]:
        """The data files of the version `pointer` names (paths, sorted)."""
        return folder_files(self.location, pointer.data, self.retry)

    def file_names(self, folder: str) -> set[str]:
        """The data files a folder holds, named relative to the output root."""
        return {relative_path(self.location, path) for path in folder_files(self.location, folder, self.retry)}

    def legacy_files(self) -> list[str]:
        """Data files of the layout before versions (`sfp-label upgrade` moves them)."""
        return legacy_files(self.location, self.retry)

    def image_ids(self) -> pa.Array:
        """The `image_id` column of the current version (only that column is read)."""
        fs = self.location.filesystem()

        def read() -> pa.Array:
            files = self.current_files()
            if not files:
                return pa.array([], pa.string())
            dataset = pads.dataset(files, filesystem=fs, format="parquet")
            return dataset.to_table(columns=["image_id"]).column("image_id").combine_chunks()

        return self.retry.call(f"reading the image ids of {self.uri}", read)

    def write(self, path: str, tables: Iterable[pa.Table], schema: pa.Schema) -> int:
        """Write one data file whole (the one Parquet recipe; a rename locally, one PUT on object stores)."""
        return self.retry.call(
            f"writing {self.location.uri_of(path)}", lambda: write_parquet(self.location, path, tables, schema)
        )

    def drop_rows_to_relabel(self, policy: str) -> int:
        """Remove the error rows `policy` retries from the current version; returns how many went."""
        return drop_rows_to_relabel(self.location, policy, self.retry)

    # --- tidying ----------------------------------------------------------------------------------------

    def tidy(self, pointer: Pointer | None) -> Pointer | None:
        """Clear what dead runs left and replaced folders past their time; the pointer as it now stands."""
        return commits.tidy(self.location, pointer, self.retry)

    def remove_late_files(self, folder: str, keep: set[str]) -> list[str]:
        """Delete the data files of `folder` not in `keep` (relative names); returns what went."""
        return commits.remove_late_files(self.location, folder, keep, self.retry)

    def remove_staging(self, run_id: str | None = None) -> None:
        """Drop one run's staging (or every run's, under the lease)."""
        commits.remove_staging(self.location, self.retry, run_id)

    def discard_folder(self, folder: str) -> None:
        """Delete a data folder no pointer names (a failed overwrite's)."""
        commits.discard_folder(self.location, folder, self.retry)

    # --- the card ---------------------------------------------------------------------------------------

    def counts(self, folder: str) -> FolderCounts:
        """Every file of `folder` with its rows and ok rows (remembered in `_sfp/counts.json`, else read)."""
        return counted_files(self.location, folder, self.retry)

    def card_is_current(self, pointer: Pointer) -> bool:
        return card_is_current(self.location, pointer, self.retry)

    def write_card(self, pointer: Pointer, written: Mapping[str, FileCount] | None = None) -> bool:
        """(Re)write the dataset card of `pointer`'s version; `written`: counts of files a run just committed,
        from their records. False, writing nothing, when the README.md there is someone else's."""
        if not is_our_card(self.location, self.retry):
            return False
        runs = sum(m.status == RUN_SUCCEEDED for m in Manifest.read_all(self.location, self.retry))
        write_card(self.location, pointer, runs, self.retry, written)
        return True
