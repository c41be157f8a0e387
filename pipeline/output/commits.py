"""Commits of the output: what a version is made of, and what dead runs leave behind.

An overwrite commits by one write of the pointer (`commit_overwrite`); an
incremental run's data files are commits as they land. Before a run writes,
`tidy` clears what dead runs left (staging, folders never flipped, replaced
folders past their time); when it commits, `remove_late_files` deletes data
files a dead run uploaded after this run read which images were done.
Every deletion rides out outages (`retry.Retry`) and counts already gone as
done.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import pyarrow.fs as pafs

from ..retry import Retry
from ..storage import Location
from .layout import data_folder, folder_files, relative_path, staging_dir
from .versions import Pointer, stale_folders


def _delete(output: Location, path: str, retry: Retry, *, directory: bool = False) -> None:
    """Delete a file (or a directory tree); already gone counts as done."""
    fs = output.filesystem()

    def delete() -> None:
        kind = fs.get_file_info(path).type
        # An object store's folder exists only through its objects (and markers, when pyarrow wrote them):
        # one emptied by bulk deletes may be gone between the look and the delete.
        with contextlib.suppress(FileNotFoundError):
            if kind == pafs.FileType.Directory and directory:
                fs.delete_dir(path)
            elif kind == pafs.FileType.File and not directory:
                fs.delete_file(path)

    retry.call(f"deleting {output.uri_of(path)}", delete)


# Called with the name of each step of an overwrite commit; tests set it to stop a driver there.
commit_step_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if commit_step_hook is not None:
        commit_step_hook(name)


def commit_overwrite(output: Location, current: Pointer, retry: Retry) -> None:
    """Make the run's data folder the output: one write of the pointer (the card follows it).

    Killed before it, the old version stands and the next run deletes the new
    folder; killed after it, the new version stands and the next run rewrites
    the card. The replaced folder stays for `KEEP_REPLACED_S`.
    """
    _step("written")
    current.write(output, retry)
    _step("flipped")


def discard_folder(output: Location, folder: str, retry: Retry) -> None:
    """Delete a data folder no pointer names (a failed overwrite's)."""
    _delete(output, data_folder(output, folder), retry, directory=True)


def tidy(output: Location, pointer: Pointer | None, retry: Retry) -> Pointer | None:
    """What dead runs left (staging, unflipped data folders) and replaced folders past their time go.

    Called under the lease before a run writes, with the pointer `output.checked_pointer` read (never one
    naming a missing folder); returns the pointer as it now stands.
    """
    remove_staging(output, retry)
    for folder in stale_folders(output, pointer, retry):
        discard_folder(output, folder, retry)
    if pointer is None:
        return None
    kept, expired = pointer.expire(time.time())
    if expired:
        kept.write(output, retry)  # the pointer stops naming them before they go
        for folder in expired:
            discard_folder(output, folder, retry)
    return kept


def remove_late_files(output: Location, folder: str, keep: set[str], retry: Retry) -> list[str]:
    """Delete the data files of `folder` that are not in `keep` (relative names); returns what went.

    Called under the lease when a run commits: `keep` holds the files there when the run started and those
    it wrote, so what else is there was written late by a run that died (an upload still in flight when its
    driver went), after this run had read which images were labelled: rows this run labelled again.
    """
    late = [path for path in folder_files(output, folder, retry) if relative_path(output, path) not in keep]
    for path in late:
        _delete(output, path, retry)
    return [relative_path(output, path) for path in late]


def remove_staging(output: Location, retry: Retry, run_id: str | None = None) -> None:
    """Drop one run's staging directory (whatever it left there), and the staging root itself once empty.

    Without `run_id`, every run's: what is staged while this run holds the
    output's lease belongs to runs that died.
    """
    fs = output.filesystem()
    root = staging_dir(output)
    if run_id is not None:
        _delete(output, staging_dir(output, run_id), retry, directory=True)
        selector = pafs.FileSelector(root, allow_not_found=True)
        if retry.call(f"listing {output.uri_of(root)}", lambda: fs.get_file_info(selector)):
            return
    _delete(output, root, retry, directory=True)
