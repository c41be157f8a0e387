"""Listing and reading: every image under the input root, as rows of `image_id` and bytes.

Ray's file readers list every key in the driver and fail a whole block on one
unreadable file; here the listing runs in a Ray task (the driver holds only
block references, whatever the corpus size) and a file that cannot be read
becomes an error row instead of an exception. An outage is not a file's
problem: storage calls are retried (`retry.Retry`), and if the storage stays
away the run fails rather than writing error rows that a re-run would skip.
Local trees are walked by `walk.walk_local` (symlink loops, names that are
not UTF-8, FIFOs).
"""

from __future__ import annotations

import functools
import math
import posixpath
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import pyarrow as pa
import pyarrow.fs as pafs
import ray

from ..errors import HostUnresolvable, InputNotFound, StorageUnavailable
from ..output import (
    DEFAULT_MAX_IMAGE_BYTES,
    REASON_OVER_BYTE_LIMIT,
    REASON_UNREADABLE,
    UNREADABLE_NOT_REGULAR,
    is_hidden,
    is_hidden_path,
)
from ..retry import Retry
from ..storage import Location, Redactor
from ..walk import Listed, walk_local

LIST_ROWS_PER_BLOCK = 10_000
LIST_THREADS = 8  # directories listed at once: listing object stores is latency-bound
READ_THREADS = 16  # files fetched at once per read task, for the same reason
# Stores (scheme, bucket, options) whose host name did not resolve, and when they gave up (`fetch_files`).
_UNRESOLVED: dict[tuple[str, str, str], float] = {}

# `error` is set when the listing already knows the file cannot be read (see walk.py).
LISTING_SCHEMA = pa.schema([("image_id", pa.string()), ("path", pa.string()), ("error", pa.string())])


def list_images(location: Location, extensions: Sequence[str], num_cpus: float, retry: Retry) -> ray.data.Dataset:
    """Rows `(image_id, path, error)` for every file under `location` with one of `extensions`.

    Hidden names (`output.is_hidden`: dot files, our own staging) are not
    inputs, as in Ray, Spark and pyarrow. A single file is its own corpus.
    `extensions` are lower case without dots (`request.Source` normalises them).
    """
    fs = location.filesystem()
    info = retry.call(f"listing {location.uri}", lambda: fs.get_file_info(location.path))
    if info.type == pafs.FileType.NotFound:
        raise InputNotFound(f"input {location.uri} does not exist; check input.uri")
    if info.type == pafs.FileType.File:
        return ray.data.from_arrow(next(_blocks([Listed(posixpath.basename(location.path), location.path)])))
    seed = ray.data.from_items([{"root": location.path}])
    return seed.map_batches(
        list_tree,
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=num_cpus,
        fn_kwargs={"location": location, "extensions": tuple(extensions), "retry": retry},
    )


def list_tree(seed: pa.Table, *, location: Location, extensions: tuple[str, ...], retry: Retry) -> Iterator[pa.Table]:
    """Walk each root: a local one with `walk_local`; in an object store its top level, then every
    top-level directory recursively, several at once."""
    fs = location.filesystem()
    for root in seed.column("root").to_pylist():
        if location.scheme == "file":
            yield from _blocks(walk_local(root, lambda name: _extension(name) in extensions))
            continue
        listing = functools.partial(_listing, fs, retry, location)
        top = listing(root, recursive=False)
        yield from _blocks(_stored_files(root, top, extensions))
        subdirs = [e.path for e in top if e.type == pafs.FileType.Directory and not is_hidden(e.base_name)]
        with ThreadPoolExecutor(max_workers=LIST_THREADS) as pool:
            pending = {pool.submit(listing, d, recursive=True) for d in subdirs}
            for future in as_completed(pending):
                pending.discard(future)  # drop each directory's listing once its rows are out
                yield from _blocks(_stored_files(root, future.result(), extensions))


def _listing(fs: pafs.FileSystem, retry: Retry, location: Location, path: str, recursive: bool) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(path, recursive=recursive)
    return retry.call(f"listing {location.uri_of(path)}", lambda: fs.get_file_info(selector))


def _stored_files(root: str, entries: list[pafs.FileInfo], extensions: tuple[str, ...]) -> Iterator[Listed]:
    """Files of an object store (or fsspec) listing; ids are the keys below the root exactly as stored
    (never normalised: `a/../b.jpg` must not become the id of another file)."""
    prefix = root.rstrip("/") + "/"
    for entry in entries:
        image_id = entry.path.removeprefix(prefix)
        if entry.type != pafs.FileType.File or is_hidden_path(image_id):
            continue
        if _extension(entry.base_name) in extensions:
            yield Listed(image_id, entry.path)


def _blocks(listed: Iterable[Listed]) -> Iterator[pa.Table]:
    rows: list[Listed] = []
    for item in listed:
        rows.append(item)
        if len(rows) == LIST_ROWS_PER_BLOCK:
            yield _table(rows)
            rows = []
    if rows:
        yield _table(rows)


def _table(rows: list[Listed]) -> pa.Table:
    columns = [[r.image_id for r in rows], [r.path for r in rows], [r.error for r in rows]]
    return pa.table(columns, schema=LISTING_SCHEMA)


def _extension(name: str) -> str:
    return posixpath.splitext(name)[1].lower().lstrip(".")


def read_files(
    batch: pa.Table, *, location: Location, redact: Redactor, retry: Retry, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
) -> pa.Table:
    """Listing rows -> `(image_id, uri, data, error)`; a file that cannot be read gets `error`, not an exception.

    Transient failures are retried; raises StorageUnavailable if the storage stays away.
    """
    paths = batch.column("path").to_pylist()
    wanted = [(location, path, error) for path, error in zip(paths, batch.column("error").to_pylist(), strict=True)]
    fetched = fetch_files(wanted, redact, retry, max_bytes)
    return pa.table(
        {
            "image_id": batch.column("image_id"),
            "uri": pa.array([location.uri_of(p) for p in paths], pa.string()),
            "data": pa.array([data for data, _ in fetched], pa.large_binary()),
            "error": pa.array([error for _, error in fetched], pa.string()),
        }
    )


def fetch_files(
    wanted: list[tuple[Location, str, str | None]],
    redact: Redactor,
    retry: Retry,
    max_bytes: int,
    hosts_per_entry: bool = False,
) -> list[tuple[bytes | None, str | None]]:
    """`(storage, path, known error)` -> `(bytes, None)` or `(None, why)`, several files at once. A file over
    `max_bytes` is refused from its size, and no more than `max_bytes + 1` bytes of any file are read (a size
    that lies, as a device's does, changes nothing). A local path that is not a regular file (a FIFO, which
    would block the read forever, or a device) is refused before it is opened.

    With `hosts_per_entry` (a list, whose entries may each name another store), a store whose host name
    still does not resolve after the retry window gives its files a transient error row instead of failing
    the run; later files of that store in this worker get that row at once for one more window.
    """

    def fetch(item: tuple[Location, str, str | None]) -> tuple[bytes | None, str | None]:
        location, path, error = item
        if error is not None:
            return None, error
        store = _store_of(location)
        if hosts_per_entry and time.monotonic() - _UNRESOLVED.get(store, -math.inf) < retry.patience_s:
            return None, redact(f"{REASON_UNREADABLE}: the storage of {location.uri_of(path)} did not resolve")
        try:
            data = retry.call(
                f"reading {location.uri_of(path)}", functools.partial(read_bounded, location, path, max_bytes)
            )
        except HostUnresolvable as exc:
            if not hosts_per_entry:
                raise
            _UNRESOLVED[store] = time.monotonic()
            return None, redact(f"{REASON_UNREADABLE}: {exc}")
        except StorageUnavailable:
            raise  # the run's problem, not this file's
        except Exception as exc:  # any other failure to fetch is this file's problem, not the block's
            return None, redact(f"{REASON_UNREADABLE}: {type(exc).__name__}: {exc}")
        return (None, data) if isinstance(data, str) else (data, None)

    with ThreadPoolExecutor(max_workers=min(READ_THREADS, max(len(wanted), 1))) as pool:
        return list(pool.map(fetch, wanted))


def _store_of(location: Location) -> tuple[str, str, str]:
    return location.scheme, location.path.split("/", 1)[0], repr(sorted(location.options.items()))


def read_bounded(location: Location, path: str, max_bytes: int) -> bytes | str:
    """A file's bytes, or why they are not read: a local path that is not a regular file, or a file over
    `max_bytes` (refused from its size; at most `max_bytes + 1` bytes are ever read, whatever it claims)."""
    fs = location.filesystem()
    if not is_regular(location, path):
        return f"{REASON_UNREADABLE}: {UNREADABLE_NOT_REGULAR}"
    with fs.open_input_file(path) as file:
        data = file.read(max_bytes + 1) if file.size() <= max_bytes else None
    if data is None or len(data) > max_bytes:
        return f"{REASON_OVER_BYTE_LIMIT}: the file holds more than {max_bytes} bytes (the limit)"
    return data


def is_regular(location: Location, path: str) -> bool:
    """False for a local FIFO or device (object stores hold only regular objects)."""
    return location.scheme != "file" or location.filesystem().get_file_info(path).type != pafs.FileType.Unknown
