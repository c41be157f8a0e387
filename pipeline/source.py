"""Listing and reading: every image under the input root, as rows of `image_id` and bytes.

Ray's file readers list every key in the driver and fail a whole block on one
unreadable file; here the listing runs in a Ray task (the driver holds only
block references, whatever the corpus size) and a file that cannot be read
becomes an error row instead of an exception.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import pyarrow as pa
import pyarrow.fs as pafs
import ray

from .schema import REASON_UNREADABLE
from .storage import Location, Redactor

LIST_ROWS_PER_BLOCK = 10_000
LIST_THREADS = 8  # directories listed at once: listing object stores is latency-bound
READ_THREADS = 16  # files fetched at once per read task, for the same reason

LISTING_SCHEMA = pa.schema([("image_id", pa.string()), ("path", pa.string())])


def normalise_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    """("JPG", ".png") -> ("jpg", "png")."""
    out = tuple(sorted({e.lower().lstrip(".") for e in extensions if e.strip(". ")}))
    if not out:
        raise ValueError("extensions is empty: nothing would be read")
    return out


def list_images(location: Location, extensions: Sequence[str], num_cpus: float) -> ray.data.Dataset:
    """Rows `(image_id, path)` for every file under `location` with one of `extensions`.

    Names starting with "." or "_" (hidden files, our own `_staging`) are not
    inputs, as in Ray, Spark and pyarrow. A single file is its own corpus.
    """
    fs = location.filesystem()
    info = fs.get_file_info(location.path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {location.uri} does not exist")
    if info.type == pafs.FileType.File:
        return ray.data.from_arrow(pa.table({"image_id": [posixpath.basename(location.path)], "path": [location.path]}))
    seed = ray.data.from_items([{"root": location.path}])
    return seed.map_batches(
        list_tree,
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=num_cpus,
        fn_kwargs={"location": location, "extensions": normalise_extensions(extensions)},
    )


def list_tree(seed: pa.Table, *, location: Location, extensions: tuple[str, ...]) -> Iterator[pa.Table]:
    """Walk each root: its top level, then every top-level directory recursively, several at once."""
    fs = location.filesystem()
    for root in seed.column("root").to_pylist():
        top = fs.get_file_info(pafs.FileSelector(root, recursive=False))
        yield from _image_rows(root, [e for e in top if e.type == pafs.FileType.File], extensions)
        subdirs = [e.path for e in top if e.type == pafs.FileType.Directory and not _hidden(e.base_name)]
        with ThreadPoolExecutor(max_workers=LIST_THREADS) as pool:
            pending = {pool.submit(fs.get_file_info, pafs.FileSelector(d, recursive=True)) for d in subdirs}
            for future in as_completed(pending):
                pending.discard(future)  # drop each directory's listing once its rows are out
                yield from _image_rows(root, [e for e in future.result() if e.type == pafs.FileType.File], extensions)


def _image_rows(root: str, files: list[pafs.FileInfo], extensions: tuple[str, ...]) -> Iterator[pa.Table]:
    ids, paths = [], []
    for entry in files:
        image_id = posixpath.relpath(entry.path, root)
        if any(_hidden(part) for part in image_id.split("/")):
            continue
        if posixpath.splitext(entry.base_name)[1].lower().lstrip(".") not in extensions:
            continue
        ids.append(image_id)
        paths.append(entry.path)
    for start in range(0, len(ids), LIST_ROWS_PER_BLOCK):
        stop = start + LIST_ROWS_PER_BLOCK
        yield pa.table([ids[start:stop], paths[start:stop]], schema=LISTING_SCHEMA)


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def read_files(batch: pa.Table, *, location: Location, redact: Redactor) -> pa.Table:
    """Listing rows -> `(image_id, uri, data, error)`; a file that cannot be read gets `error`, not an exception."""
    fs = location.filesystem()
    paths = batch.column("path").to_pylist()

    def fetch(path: str) -> tuple[bytes | None, str | None]:
        try:
            with fs.open_input_stream(path) as stream:
                return stream.read(), None
        except Exception as exc:  # any failure to fetch is this file's problem, not the block's
            return None, redact(f"{REASON_UNREADABLE}: {type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=min(READ_THREADS, max(len(paths), 1))) as pool:
        fetched = list(pool.map(fetch, paths))
    return pa.table(
        {
            "image_id": batch.column("image_id"),
            "uri": pa.array([location.uri_of(p) for p in paths], pa.string()),
            "data": pa.array([data for data, _ in fetched], pa.large_binary()),
            "error": pa.array([error for _, error in fetched], pa.string()),
        }
    )
