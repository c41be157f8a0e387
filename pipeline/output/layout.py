"""Where everything a run leaves lives under the output root, and which names readers skip.

    OUTPUT/part-<run_id>-<task>.parquet   the rows: complete files only
    OUTPUT/_runs/<run_id>.json            one manifest per run
    OUTPUT/_staging/<run_id>/             files not yet committed
    OUTPUT/_lease/<generation>.json       who is writing the output now

Names starting with "_" or "." are not data: pyarrow, Spark and Ray skip them
too, and the input listing skips them so an output inside its own input is
never read back. See docs/design.md ("Output layout").
"""

from __future__ import annotations

import posixpath
import re

import pyarrow.fs as pafs

from ..retry import Retry
from ..storage import Location

RUNS_DIR = "_runs"
STAGING_DIR = "_staging"
LEASE_DIR = "_lease"
DATA_SUFFIX = ".parquet"
MANIFEST_SUFFIX = ".json"
_HIDDEN_PREFIXES = ("_", ".")
COMMIT_JOURNAL = "_commit.json"  # inside a run's staging folder: what its overwrite commit replaces
# Data files this project writes: top-level `part-<anything>.parquet` (see `data_file_name`).
_OUR_DATA_FILE = re.compile(r"^part-[^/]+\.parquet$")


def is_hidden(name: str) -> bool:
    """Whether one path component is hidden from readers (and from input listings)."""
    return name.startswith(_HIDDEN_PREFIXES)


def is_hidden_path(relative: str) -> bool:
    """Whether any component of a "/"-separated relative path is hidden."""
    return any(is_hidden(part) for part in relative.split("/"))


def data_file_name(run_id: str, task_index: int) -> str:
    """A committed data file's name: from the run and Ray's task index, never from input names."""
    return f"part-{run_id}-{task_index:06d}{DATA_SUFFIX}"


def staging_dir(output: Location, run_id: str | None = None) -> str:
    return output.join(STAGING_DIR, run_id) if run_id else output.join(STAGING_DIR)


def staged_file(output: Location, run_id: str, name: str) -> str:
    return output.join(STAGING_DIR, run_id, name)


def committed_file(output: Location, name: str) -> str:
    return output.join(name)


def runs_dir(output: Location) -> str:
    return output.join(RUNS_DIR)


def manifest_path(output: Location, run_id: str) -> str:
    return output.join(RUNS_DIR, f"{run_id}{MANIFEST_SUFFIX}")


def lease_dir(output: Location) -> str:
    return output.join(LEASE_DIR)


def lease_path(output: Location, generation: int) -> str:
    return output.join(LEASE_DIR, f"{generation:012d}{MANIFEST_SUFFIX}")


def journal_path(output: Location, run_id: str) -> str:
    return output.join(STAGING_DIR, run_id, COMMIT_JOURNAL)


def is_our_data_file(relative: str) -> bool:
    """Whether a path relative to the output root is a data file this project wrote."""
    return bool(_OUR_DATA_FILE.match(relative))


def _visible_files(output: Location, retry: Retry) -> list[str]:
    """Paths, relative to the output root, of every file a reader of the folder would see."""
    fs = output.filesystem()
    if retry.call(f"listing {output.uri}", lambda: fs.get_file_info(output.path)).type != pafs.FileType.Directory:
        return []
    selector = pafs.FileSelector(output.path, recursive=True)
    entries = retry.call(f"listing {output.uri}", lambda: fs.get_file_info(selector))
    relative = (posixpath.relpath(e.path, output.path) for e in entries if e.type == pafs.FileType.File)
    return sorted(path for path in relative if not is_hidden_path(path))


def data_files(output: Location, retry: Retry) -> list[str]:
    """Paths of the committed data files, sorted: what every reader of the output sees."""
    return [output.join(path) for path in _visible_files(output, retry) if is_our_data_file(path)]


def foreign_files(output: Location, retry: Retry) -> list[str]:
    """Files under the output root that this project did not write (relative paths)."""
    return [path for path in _visible_files(output, retry) if not is_our_data_file(path)]
