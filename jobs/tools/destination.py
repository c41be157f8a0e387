"""Where export, render and eval write: local folders, checked before any work so that a destination
that cannot be one is a one-line user error (exit 2), not an OSError from deep inside the first write."""

from __future__ import annotations

from pathlib import Path

from sfp_core import UserError


class DestinationError(UserError, ValueError):
    """The destination given on the command line cannot be written as asked (a file where a folder goes)."""


def writable_folder(folder: Path) -> Path:
    """`folder`, refused if it or the nearest part of it that exists is not a folder (a file, a broken link):
    `mkdir` would fail there, after the output was opened and read."""
    for part in (folder, *folder.parents):
        if part.is_dir():
            return folder
        if part.exists() or part.is_symlink():
            named = str(folder) if part == folder else f"{folder}: {part}"
            raise DestinationError(f"{named} exists and is not a folder; give a new or existing folder")
    return folder
