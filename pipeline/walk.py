"""Listing a local directory tree that nobody vetted: loops end, odd names and odd files become error rows.

pyarrow's local listing follows a directory symlink with no loop check (a
link to `..` recurses until the path is too long) and fails the whole
listing on one file name that is not UTF-8. This walk instead
- follows directory symlinks but enters each real directory once, so a
  loop ends where it closes;
- lists names as bytes: a name that is not UTF-8 gets an error row (Arrow,
  Parquet and object stores need UTF-8 keys) with its bytes shown as `\\xff`;
- flags files that are not regular (FIFOs, devices: reading one could block
  forever) as error rows. Broken or looping file symlinks are listed as they
  are; reading them fails, which gives their error row.
Image ids stay relative to the root; a symlink that points outside the root
is read where it points, under its own name inside the root.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .output import REASON_UNREADABLE, UNREADABLE_NAME, UNREADABLE_NOT_REGULAR, is_hidden


@dataclass(frozen=True)
class Listed:
    """One input file: its id (relative, "/"-separated), its path, and why it cannot be read (or None)."""

    image_id: str
    path: str
    error: str | None = None


def walk_local(root: str, wanted: Callable[[str], bool]) -> Iterator[Listed]:
    """Every file under `root` whose name `wanted` accepts; hidden names (`output.is_hidden`) are skipped."""
    top = os.fsencode(root)
    seen = {_identity(top)}
    pending = [b""]
    while pending:
        relative = pending.pop()
        directory = os.path.join(top, relative) if relative else top
        with os.scandir(directory) as entries:
            children = sorted(entries, key=lambda e: e.name)
        for entry in children:
            if is_hidden(os.fsdecode(entry.name)):
                continue
            child = os.path.join(relative, entry.name) if relative else entry.name
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:  # a looping symlink: not a directory we can enter
                is_dir = False
            if is_dir:
                identity = _identity(entry.path)
                if identity not in seen:
                    seen.add(identity)
                    pending.append(child)
            elif wanted(os.fsdecode(entry.name)):
                yield _listed(root, child, entry)


def _identity(path: bytes) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _listed(root: str, relative: bytes, entry: os.DirEntry[bytes]) -> Listed:
    try:
        image_id = relative.decode("utf-8")
    except UnicodeDecodeError:
        shown = relative.decode("utf-8", "backslashreplace")
        return Listed(shown, f"{root}/{shown}", f"{REASON_UNREADABLE}: {UNREADABLE_NAME} ({shown!r})")
    try:
        mode = entry.stat().st_mode  # follows symlinks
    except OSError:  # broken or looping symlink: reading it says why
        return Listed(image_id, f"{root}/{image_id}")
    if not stat.S_ISREG(mode):
        return Listed(image_id, f"{root}/{image_id}", f"{REASON_UNREADABLE}: {UNREADABLE_NOT_REGULAR}")
    return Listed(image_id, f"{root}/{image_id}")
