"""Vocabulary: the classes to segment, each with one or more query names (synonyms)."""

from __future__ import annotations

import hashlib
import stat
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import UserError

# A vocabulary file larger than this is not a class list (200 classes with synonyms take a few kB).
MAX_VOCABULARY_FILE_BYTES = 1 << 20

# Masks store a class index per pixel: 8-bit up to 255 classes, so that value 255 stays free as the ignore
# label of VOC / mmsegmentation exports; 16-bit above that (docs/design.md, "Rows").
_UINT8_CLASSES = 255
_UINT16_CLASSES = 65536


def mask_dtype_for(num_classes: int) -> type[np.unsignedinteger]:
    """The integer type of masks over `num_classes` classes: uint8 up to 255 classes, else uint16."""
    return np.uint8 if num_classes <= _UINT8_CLASSES else np.uint16


def spans_lines(name: str) -> bool:
    """True for a name holding a line break or another control character: one per line is how class names
    are stored (`classes.txt`, vocabulary files), and such a name would shift every class after it."""
    return any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in name)


class VocabularyError(UserError, ValueError):
    """The classes cannot be used: empty, a blank name, too many, or an unreadable file."""


def read_small_text(path: Path, limit: int, what: str, error: type[Exception]) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes; `error` naming the file otherwise.

    Regular files only: a FIFO would block the reader forever and a device
    (`/dev/zero`) would fill memory.
    """
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is not a regular file")
        if info.st_size > limit:
            raise error(f"{what} {path} has {info.st_size} bytes; the limit is {limit}")
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise error(f"{what} {path} is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


class Vocabulary:
    """Classes in index order; class `i` is predicted when any of its names wins.

    Files hold one class per line with synonyms separated by commas; spaces
    around names are stripped and blank lines skipped (the reference's parse).
    """

    def __init__(self, classes: Sequence[Sequence[str] | str]):
        parsed: list[tuple[str, ...]] = []
        for index, entry in enumerate(classes):
            names = [entry] if isinstance(entry, str) else list(entry)
            names = [str(n).strip() for n in names]
            if not names or any(not n for n in names):
                raise VocabularyError(f"vocabulary class {index} has an empty name: {entry!r}")
            if any(spans_lines(n) for n in names):
                raise VocabularyError(
                    f"vocabulary class {index} has a name with a line break or control character: {entry!r}"
                )
            parsed.append(tuple(names))
        if not parsed:
            raise VocabularyError("vocabulary is empty: it needs at least one class")
        if len(parsed) > _UINT16_CLASSES:
            raise VocabularyError(f"vocabulary has {len(parsed)} classes; masks hold at most {_UINT16_CLASSES}")
        self.classes: tuple[tuple[str, ...], ...] = tuple(parsed)

    @classmethod
    def from_lines(cls, lines: Sequence[str]) -> Vocabulary:
        return cls([line.split(",") for line in lines if line.strip()])

    @classmethod
    def from_file(cls, path: str | Path) -> Vocabulary:
        """One class per line, synonyms comma-separated; a regular UTF-8 file of at most 1 MiB."""
        text = read_small_text(Path(path), MAX_VOCABULARY_FILE_BYTES, "vocabulary file", VocabularyError)
        try:
            return cls.from_lines(text.splitlines())
        except ValueError as exc:
            raise VocabularyError(f"vocabulary file {path}: {exc}") from exc

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def mask_dtype(self) -> type[np.unsignedinteger]:
        """The integer type of this vocabulary's masks (`mask_dtype_for`)."""
        return mask_dtype_for(self.num_classes)

    @property
    def class_names(self) -> list[str]:
        """The first name of each class, used as its display name."""
        return [names[0] for names in self.classes]

    @property
    def query_names(self) -> list[str]:
        """Every name of every class, flattened in file order (one text embedding each)."""
        return [name for names in self.classes for name in names]

    @property
    def query_to_class(self) -> list[int]:
        """For each query name, the index of its class."""
        return [index for index, names in enumerate(self.classes) for _ in names]

    def to_lines(self) -> list[str]:
        return [", ".join(names) for names in self.classes]

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.to_lines()).encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.classes == other.classes

    def __hash__(self) -> int:
        return hash(self.classes)

    def __len__(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return f"Vocabulary({self.num_classes} classes, {len(self.query_names)} names)"
