"""Naming many files with one URI: a folder or prefix, a glob, or brace notation.

`s3://b/shards/` (every file under it with a wanted suffix), `s3://b/train/*.tar`
(`*` and `?` stay within a folder, `**/` spans folders) and
`s3://b/shards/{00000..01023}.tar` (expanded, never listed: a name that does
not exist gets its own error row when read). Names are relative to the folder
the pattern starts in (`FilePattern.base_uri`); they become ids, so they are
stable whatever the order of listing. Listing runs in a Ray task: the driver
never holds the names.
"""

from __future__ import annotations

import itertools
import posixpath
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray

from ..errors import InputNotFound
from ..output import is_hidden
from ..retry import Retry
from ..storage import Location
from ..walk import walk_local

_PATTERN_CHARS = re.compile(r"[*?\[{]")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
MAX_EXPANDED_NAMES = 10_000_000  # a typo such as {0..9999999999} stops here rather than filling memory
NAMES_PER_BLOCK = 10_000


@dataclass(frozen=True)
class FilePattern:
    """`input.uri` split into the folder it starts in and the pattern below it ("" = every shard under it)."""

    base_uri: str
    pattern: str

    @classmethod
    def parse(cls, uri: str) -> FilePattern:
        scheme, sep, rest = uri.partition("://")
        head, parts = (f"{scheme}{sep}", rest.split("/")) if sep else ("", uri.split("/"))
        for index, part in enumerate(parts):
            if _PATTERN_CHARS.search(part):
                return cls(head + "/".join(parts[:index]), "/".join(parts[index:]))
        return cls(uri, "")


def expand_braces(pattern: str) -> Iterator[str]:
    """`a{00..02}b{x,y}` -> a00bx, a00by, a01bx, ... (ranges keep the width of a zero-padded start)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        yield pattern
        return
    head, tail, inner = pattern[: match.start()], pattern[match.end() :], match.group(1)
    numbers = _RANGE.match(inner)
    if numbers:
        low, high = numbers.group(1), numbers.group(2)
        width = len(low) if low.startswith("0") or high.startswith("0") else 0
        step = 1 if int(high) >= int(low) else -1
        choices: Iterator[str] | list[str] = (str(n).zfill(width) for n in range(int(low), int(high) + step, step))
    else:
        choices = inner.split(",")
    for choice in choices:
        yield from expand_braces(head + choice + tail)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob: `*` and `?` stay within a folder, `**/` spans any number of them, `[...]` a set."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1 : end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matching_files(
    pattern: FilePattern, location: Location, suffixes: Sequence[str], retry: Retry
) -> Iterator[tuple[str, str]]:
    """`(name, path)` of each file the pattern names: names relative to `location` (the pattern's base), a
    plain folder or prefix naming every file under it that ends in one of `suffixes` (hidden names skipped)."""
    if "{" in pattern.pattern:
        for name in itertools.islice(expand_braces(pattern.pattern), MAX_EXPANDED_NAMES):
            yield name, posixpath.join(location.path, name)
        return
    fs = location.filesystem()
    info = retry.call(f"listing {location.uri}", lambda: fs.get_file_info(location.path))
    if info.type == pafs.FileType.NotFound:
        raise InputNotFound(f"input {location.uri} does not exist; check input.uri")
    if info.type == pafs.FileType.File and not pattern.pattern:  # one file named directly
        yield posixpath.basename(location.path), location.path
        return
    matcher = _glob_regex(pattern.pattern) if pattern.pattern else None
    wanted = tuple(s.lower() for s in suffixes)
    for name in sorted(_files_under(location, retry)):
        if matcher.match(name) if matcher else name.lower().endswith(wanted):
            yield name, posixpath.join(location.path, name)


UNIT_SCHEMA = pa.schema([("unit", pa.int64()), ("path", pa.string()), ("name", pa.string())])


def name_blocks(files: Iterator[tuple[str, str]]) -> Iterator[pa.Table]:
    """`(unit, path, name)` blocks of `NAMES_PER_BLOCK` files, numbering them in order."""
    unit = itertools.count()
    while chunk := list(itertools.islice(files, NAMES_PER_BLOCK)):
        yield pa.table(
            [[next(unit) for _ in chunk], [path for _, path in chunk], [name for name, _ in chunk]], schema=UNIT_SCHEMA
        )


def _files_under(location: Location, retry: Retry) -> Iterator[str]:
    if location.scheme == "file":
        for listed in walk_local(location.path, lambda name: True):
            if listed.error is None:
                yield listed.image_id
        return
    fs = location.filesystem()
    selector = pafs.FileSelector(location.path, recursive=True)
    prefix = location.path.rstrip("/") + "/"
    for entry in retry.call(f"listing {location.uri}", lambda: fs.get_file_info(selector)):
        relative = entry.path.removeprefix(prefix)
        if entry.type == pafs.FileType.File and not any(is_hidden(p) for p in relative.split("/")):
            yield relative


def planned_in_a_task(
    planner: Callable[..., Iterator[pa.Table]], num_cpus: float, **arguments: Any
) -> ray.data.Dataset:
    """The blocks `planner(**arguments)` yields, made in one Ray task: listing runs where the cluster is,
    and its rows go to the object store, never through the driver."""
    return ray.data.from_items([{"plan": 0}]).map_batches(
        _run_planner,
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=num_cpus,
        fn_kwargs={"planner": planner, "arguments": arguments},
    )


def _run_planner(seed: pa.Table, *, planner: Callable[..., Iterator[pa.Table]], arguments: dict) -> Iterator[pa.Table]:
    del seed  # one task, one plan
    yield from planner(**arguments)
