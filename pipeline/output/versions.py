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

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from sfp_core import UserError

from ..retry import Retry
from ..storage import Location
from .identity import LabelIdentity
from .layout import data_folders, folder_files, is_data_folder, pointer_path, read_small_file, replace_file
from .manifest import RUN_SUCCEEDED, Manifest

# How long a replaced data folder stays readable after an overwrite's flip.
KEEP_REPLACED_S = 3600.0


class PointerDamaged(UserError, ValueError):
    """`_sfp/current.json` cannot be read as a pointer (edited by hand, or written by something else)."""


def _data_folder_name(name: str) -> str:
    """A pointer names folders at the output's top level only (never `..` or a path)."""
    if not is_data_folder(name):
        raise ValueError(f"{name!r} is not a data folder name (data-<run id>)")
    return name


DataFolderName = Annotated[str, AfterValidator(_data_folder_name)]


class ReplacedFolder(BaseModel):
    model_config = ConfigDict(frozen=True)

    folder: DataFolderName
    replaced_at: float


class Pointer(BaseModel):
    """The current data folder, what its labels mean, and the replaced folders not yet deleted."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    data: DataFolderName
    identity: LabelIdentity
    created_by: str  # the run that created the data folder
    replaced: list[ReplacedFolder] = Field(default_factory=list)

    @classmethod
    def read(cls, output: Location, retry: Retry) -> Pointer | None:
        raw = read_small_file(output, pointer_path(output), retry)
        if raw is None:
            return None
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"]) or "the file"
            raise PointerDamaged(
                f"{output.uri_of(pointer_path(output))} is damaged ({where}: {problem['msg']}); it names the "
                "output's current data folder: restore it, or label into a new output"
            ) from exc

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


def checked_pointer(output: Location, retry: Retry) -> Pointer | None:
    """The pointer, if following it cannot lose data; `PointerDamaged` (exit 2) if it can.

    A run deletes the data folders the pointer does not name (`stale_folders`), so a pointer edited to name
    a folder that is not there, one listing its own folder as replaced, or a pointer gone while a run that
    succeeded left its rows, would have the real data deleted. None: no pointer and nothing to lose.
    """
    pointer = Pointer.read(output, retry)
    folders = data_folders(output, retry)
    where = output.uri_of(pointer_path(output))
    advice = "restore it to name the output's current data folder, or label into a new output"
    if pointer is None:
        if folders and any(m.status == RUN_SUCCEEDED for m in Manifest.read_all(output, retry)):
            raise PointerDamaged(
                f"{where} is missing while {', '.join(folders)} holds rows of runs that succeeded; {advice}"
            )
        return None
    if pointer.data in {r.folder for r in pointer.replaced}:
        raise PointerDamaged(f"{where} lists its own data folder {pointer.data} as replaced; {advice}")
    if folders and pointer.data not in folders:
        raise PointerDamaged(
            f"{where} names {pointer.data}, which is not there (data folders: {', '.join(folders)}); {advice}"
        )
    return pointer


def current_files(output: Location, retry: Retry) -> list[str]:
    """Paths of the current data folder's files, sorted: what every documented reader of the output reads."""
    pointer = Pointer.read(output, retry)
    return folder_files(output, pointer.data, retry) if pointer else []


def stale_folders(output: Location, pointer: Pointer | None, retry: Retry) -> list[str]:
    """Data folders no reader can be in: left by runs that died before their flip (or, without a pointer, all)."""
    keep = pointer.folders if pointer else set()
    return [name for name in data_folders(output, retry) if name not in keep]
