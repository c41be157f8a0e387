"""Where everything a run leaves lives under the output root, and which names are whose.

    OUTPUT/README.md                          the dataset card (Hugging Face), naming the data folder
    OUTPUT/data-<run_id>/part-*.parquet       the rows: complete Parquet files only
    OUTPUT/_sfp/current.json                  the pointer: which data folder is the output now
    OUTPUT/_sfp/runs/<run_id>.json            one manifest per run
    OUTPUT/_sfp/counts.json                   rows and ok rows per data file, for the card
    OUTPUT/_sfp/staging/<run_id>/             parts staged by the workers, not yet merged into data files
    OUTPUT/_sfp/lease/<generation>.json       who is writing the output now

A data folder is a version of the output: incremental runs add files to the
current one; an overwrite writes a new one and flips the pointer (and the
card) to it in one write, so a reader that goes through either never sees a
mix. Names starting with "_" or "." are not data: pyarrow, Spark, polars and
Hugging Face datasets skip them, and the input listing skips them so an
output inside its own input is never read back. See docs/design.md
("Output layout").
"""

from __future__ import annotations

import posixpath
import re
import secrets

import pyarrow.fs as pafs

from ..retry import Retry
from ..storage import Location

META_DIR = "_sfp"
RUNS_DIR = f"{META_DIR}/runs"
STAGING_DIR = f"{META_DIR}/staging"
LEASE_DIR = f"{META_DIR}/lease"
POINTER_FILE = f"{META_DIR}/current.json"
COUNTS_FILE = f"{META_DIR}/counts.json"  # rows and ok rows per data file of the current folder, for the card
CARD_FILE = "README.md"
DATA_FOLDER_PREFIX = "data-"
DATA_SUFFIX = ".parquet"
STAGED_SUFFIX = ".arrow"  # a staged part: Arrow IPC (output.parts)
MANIFEST_SUFFIX = ".json"
_HIDDEN_PREFIXES = ("_", ".")
_DATA_FOLDER = re.compile(r"^data-[0-9A-Za-z-]+$")
# Data files this project writes: `data-<run_id>/part-<anything>.parquet` (see `data_file_name`).
_OUR_DATA_FILE = re.compile(r"^data-[0-9A-Za-z-]+/part-[^/]+\.parquet$")
# What older releases left at the output root (data files there, manifests under `_runs/`).
_LEGACY_DATA_FILE = re.compile(r"^part-[^/]+\.parquet$")
LEGACY_RUNS_DIR = "_runs"


def is_hidden(name: str) -> bool:
    """Whether one path component is hidden from readers (and from input listings)."""
    return name.startswith(_HIDDEN_PREFIXES)


def is_hidden_path(relative: str) -> bool:
    """Whether any component of a "/"-separated relative path is hidden."""
    return any(is_hidden(part) for part in relative.split("/"))


def data_folder_name(run_id: str) -> str:
    """The data folder a run creates (the first run of an output, or an overwrite): named after it."""
    return f"{DATA_FOLDER_PREFIX}{run_id}"


def is_data_folder(name: str) -> bool:
    return bool(_DATA_FOLDER.match(name))


def data_file_name(run_id: str, task_index: int) -> str:
    """A data file's name: from the run and Ray's task index, never from input names."""
    return f"part-{run_id}-{task_index:06d}{DATA_SUFFIX}"


def data_folder(output: Location, folder: str) -> str:
    return output.join(folder)


def data_file(output: Location, folder: str, name: str) -> str:
    return output.join(folder, name)


def staging_dir(output: Location, run_id: str | None = None) -> str:
    return output.join(STAGING_DIR, run_id) if run_id else output.join(STAGING_DIR)


def staged_file(output: Location, run_id: str, name: str) -> str:
    return output.join(STAGING_DIR, run_id, name)


def runs_dir(output: Location) -> str:
    return output.join(RUNS_DIR)


def manifest_path(output: Location, run_id: str) -> str:
    return output.join(RUNS_DIR, f"{run_id}{MANIFEST_SUFFIX}")


def lease_dir(output: Location) -> str:
    return output.join(LEASE_DIR)


def lease_path(output: Location, generation: int) -> str:
    return output.join(LEASE_DIR, f"{generation:012d}{MANIFEST_SUFFIX}")


def pointer_path(output: Location) -> str:
    return output.join(POINTER_FILE)


def counts_path(output: Location) -> str:
    return output.join(COUNTS_FILE)


def card_path(output: Location) -> str:
    return output.join(CARD_FILE)


def relative_path(output: Location, path: str) -> str:
    """A filesystem path under the output as records name it: relative to the output root."""
    return posixpath.relpath(path, output.path)


def is_our_data_file(relative: str) -> bool:
    """Whether a path relative to the output root is a data file this project wrote."""
    return bool(_OUR_DATA_FILE.match(relative))


def visible_files(output: Location, retry: Retry) -> list[str]:
    """Paths, relative to the output root, of every file a reader of the folder would see."""
    fs = output.filesystem()
    if retry.call(f"listing {output.uri}", lambda: fs.get_file_info(output.path)).type != pafs.FileType.Directory:
        return []
    selector = pafs.FileSelector(output.path, recursive=True)
    entries = retry.call(f"listing {output.uri}", lambda: fs.get_file_info(selector))
    relative = (posixpath.relpath(e.path, output.path) for e in entries if e.type == pafs.FileType.File)
    return sorted(path for path in relative if not is_hidden_path(path))


def folder_files(output: Location, folder: str, retry: Retry) -> list[str]:
    """Paths of the data files in one data folder, sorted (none when it does not exist)."""
    return sorted(folder_file_sizes(output, folder, retry))


def folder_file_sizes(output: Location, folder: str, retry: Retry) -> dict[str, int]:
    """Path -> size of each data file in one data folder (none when it does not exist): one listing."""
    fs = output.filesystem()
    selector = pafs.FileSelector(data_folder(output, folder), allow_not_found=True)
    entries = retry.call(f"listing {output.uri_of(data_folder(output, folder))}", lambda: fs.get_file_info(selector))
    return {
        e.path: e.size for e in entries if e.type == pafs.FileType.File and is_our_data_file(f"{folder}/{e.base_name}")
    }


def data_folders(output: Location, retry: Retry) -> list[str]:
    """Names of the data folders under the output root, current or not."""
    fs = output.filesystem()
    selector = pafs.FileSelector(output.path, allow_not_found=True)
    entries = retry.call(f"listing {output.uri}", lambda: fs.get_file_info(selector))
    return sorted(e.base_name for e in entries if e.type == pafs.FileType.Directory and is_data_folder(e.base_name))


def legacy_files(output: Location, retry: Retry) -> list[str]:
    """What an older release left at the root (data files there, `_runs/`): relative paths, or none."""
    fs = output.filesystem()
    selector = pafs.FileSelector(output.path, allow_not_found=True)
    entries = retry.call(f"listing {output.uri}", lambda: fs.get_file_info(selector))
    return sorted(
        e.base_name
        for e in entries
        if (e.type == pafs.FileType.File and _LEGACY_DATA_FILE.match(e.base_name))
        or (e.type == pafs.FileType.Directory and e.base_name == LEGACY_RUNS_DIR)
    )


def replace_file(output: Location, path: str, data: bytes, retry: Retry) -> None:
    """Write a small file whole: staged under `_sfp/` beside nothing a reader lists, then moved onto `path`.

    A move is a rename locally and one copy on object stores, so a reader
    finds the old bytes or the new ones, never a part.
    """
    fs = output.filesystem()
    partial = output.join(META_DIR, f"partial-{secrets.token_hex(6)}-{posixpath.basename(path)}")

    def write() -> None:
        fs.create_dir(posixpath.dirname(path), recursive=True)
        fs.create_dir(posixpath.dirname(partial), recursive=True)
        with fs.open_output_stream(partial) as stream:
            stream.write(data)
        fs.move(partial, path)

    retry.call(f"writing {output.uri_of(path)}", write)


def read_small_file(output: Location, path: str, retry: Retry) -> bytes | None:
    """The bytes of a small file we wrote (pointer, card), or None when it does not exist."""
    fs = output.filesystem()

    def read() -> bytes | None:
        try:
            with fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    return retry.call(f"reading {output.uri_of(path)}", read)
