"""The pointer: which data folder is the output now, and which replaced ones are kept a while.

`_sfp/current.json` is written whole (staged, then moved; one PUT on object
stores), so flipping it is the one atomic step of an overwrite: readers that
go through it (the read helper, `LabelledOutput`, `current_files`) see the
old version or the new one, never a mix. A replaced folder stays for
`KEEP_REPLACED_S` so that readers which resolved the pointer just before the
flip can finish; the first run after that deletes it. Data folders the
pointer does not name are runs that died before their flip.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..retry import Retry
from ..storage import Location
from .identity import LabelIdentity
from .layout import data_folders, folder_files, pointer_path, read_small_file, replace_file

# How long a replaced data folder stays readable after an overwrite's flip.
KEEP_REPLACED_S = 3600.0


class ReplacedFolder(BaseModel):
    model_config = ConfigDict(frozen=True)

    folder: str
    replaced_at: float


class Pointer(BaseModel):
    """The current data folder, what its labels mean, and the replaced folders not yet deleted."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    data: str
    identity: LabelIdentity
    created_by: str  # the run that created the data folder
    replaced: list[ReplacedFolder] = Field(default_factory=list)

    @classmethod
    def read(cls, output: Location, retry: Retry) -> Pointer | None:
        raw = read_small_file(output, pointer_path(output), retry)
        return None if raw is None else cls.model_validate_json(raw)

    def write(self, output: Location, retry: Retry) -> None:
        replace_file(output, pointer_path(output), self.model_dump_json(indent=2).encode(), retry)

    def replaced_by(self, folder: str, identity: LabelIdentity, run_id: str, now: float) -> Pointer:
        """The pointer after an overwrite: `folder` current, this one's folder kept as replaced."""
        kept = [*self.replaced, ReplacedFolder(folder=self.data, replaced_at=now)]
        return Pointer(data=folder, identity=identity, created_by=run_id, replaced=kept)

    def expire(self, now: float) -> tuple[Pointer, list[str]]:
        """This pointer without the replaced folders old enough to delete, and their names."""
        old = [r.folder for r in self.replaced if now - r.replaced_at >= KEEP_REPLACED_S]
        kept = [r for r in self.replaced if r.folder not in old]
        return self.model_copy(update={"replaced": kept}), old

    @property
    def folders(self) -> set[str]:
        """Every folder readers may be in: the current one and those replaced recently."""
        return {self.data, *(r.folder for r in self.replaced)}


def current_files(output: Location, retry: Retry) -> list[str]:
    """Paths of the current data folder's files, sorted: what every documented reader of the output reads."""
    pointer = Pointer.read(output, retry)
    return folder_files(output, pointer.data, retry) if pointer else []


def stale_folders(output: Location, pointer: Pointer | None, retry: Retry) -> list[str]:
    """Data folders no reader can be in: left by runs that died before their flip (or, without a pointer, all)."""
    keep = pointer.folders if pointer else set()
    return [name for name in data_folders(output, retry) if name not in keep]
