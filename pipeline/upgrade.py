"""`upgrade_output`: move an output written by sfp-label 0.1 into the current layout, labelling nothing.

0.1 kept its data files at the output root and its manifests under `_runs/`.
Under the output's lease, each data file is rewritten into a new data folder
with the identity (vocabulary, settings) in its metadata, the manifests move
to `_sfp/runs/`, the pointer is written before the first file and the card
last: a run killed midway leaves both layouts' parts, and running it again
finishes the move. Every root file is read and checked first, so a damaged or
differently labelled one stops the upgrade before anything moves, and rows of
images the output already holds are left out (one row per image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import ValidationError

from .errors import StorageUnavailable
from .lease import OutputLease
from .output import (
    LabelIdentity,
    LabelTable,
    Manifest,
    Pointer,
    data_file,
    data_folder_name,
    manifest_path,
    new_run_id,
)
from .output.layout import LEGACY_RUNS_DIR, replace_file
from .output.reader import OutputError
from .retry import Retry
from .storage import Location


@dataclass(frozen=True)
class Upgrade:
    """What an upgrade did: the pointer it leaves, the files it moved, and the rows it left out because the
    output already held their images (one row per image, the current data folder's)."""

    pointer: Pointer
    files: int
    duplicates: int


def upgrade_output(uri: str, storage_options: dict[str, Any] | None = None) -> Upgrade:
    """Move the 0.1 output at `uri` into a data folder with a pointer and a card.

    Every root file is read and checked before anything is written: a file that is not Parquet, or labelled
    with other labels than the output's, is refused (`OutputError`) and nothing moves. A row whose image
    the output already holds (the current folder's, or an earlier root file's) is left out, so each image
    keeps one row.
    """
    output, retry = Location.parse(uri, storage_options), Retry()
    table = LabelTable(output, retry)
    fs = output.filesystem()
    found = table.legacy_files()
    runs_kind = retry.call(f"reading {uri}", lambda: fs.get_file_info(output.join(LEGACY_RUNS_DIR)).type)
    if runs_kind == pafs.FileType.File:
        raise OutputError(f"{uri}: {LEGACY_RUNS_DIR} is a file, not the folder of run manifests 0.1 wrote; move it")
    if not found:
        raise OutputError(f"{uri}: nothing to upgrade (no data files at its root, no _runs/ folder)")
    with OutputLease(output, "sfp-label upgrade", retry=retry):
        names = [n for n in found if n != LEGACY_RUNS_DIR]
        schemas = {name: _root_file_schema(output, name, retry) for name in names}
        manifests = _move_manifests(output, fs, retry)
        pointer = table.pointer_as_written() or Pointer(
            data=data_folder_name(new_run_id()), identity=_identity(uri, manifests), created_by="upgrade"
        )
        for name, schema in schemas.items():
            _check_identity(uri, name, schema, pointer)
        table.set_pointer(pointer)  # before any file, so that a second attempt writes into the same folder
        seen = set(table.image_ids().to_pylist())
        duplicates = 0
        for name in schemas:
            duplicates += _move_data_file(table, name, pointer, seen)
        table.write_card(pointer)
    return Upgrade(pointer, len(schemas), duplicates)


def _root_file_schema(output: Location, name: str, retry: Retry) -> pa.Schema:
    """A root file's schema, from its footer: what shows a file that is not Parquet, and what labelled it."""
    fs, path = output.filesystem(), output.join(name)
    try:
        return retry.call(f"reading {output.uri_of(path)}", lambda: pq.read_schema(path, filesystem=fs))
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, StorageUnavailable):
            raise
        raise OutputError(f"cannot upgrade {output.uri}: {name} is not a readable Parquet file ({exc})") from None


def _check_identity(uri: str, name: str, schema: pa.Schema, pointer: Pointer) -> None:
    """A root file that says what labelled it must say what the output says (0.1 files say nothing)."""
    try:
        identity = LabelIdentity.from_schema(schema)
    except (ValueError, ValidationError) as exc:
        raise OutputError(f"cannot upgrade {uri}: {name} carries damaged label metadata ({exc})") from None
    conflict = identity.conflict_with(pointer.identity) if identity else None
    if conflict:
        raise OutputError(f"cannot upgrade {uri}: {name} was labelled differently from the output ({conflict})")


def _move_data_file(table: LabelTable, name: str, pointer: Pointer, seen: set[str]) -> int:
    """Rewrite one root data file into the data folder, the identity in its metadata, without the rows of
    images in `seen` (which it extends); then delete it. Returns the rows left out."""
    output, retry = table.location, table.retry
    fs = output.filesystem()
    source, target = output.join(name), data_file(output, pointer.data, name)
    found = retry.call(f"reading {output.uri_of(source)}", lambda: pq.read_table(source, filesystem=fs))
    ids = found.column("image_id").to_pylist()
    keep = [image_id not in seen and not seen.add(image_id) for image_id in ids]
    rows = found.filter(pa.array(keep)).replace_schema_metadata(pointer.identity.schema_metadata())
    if rows.num_rows:
        table.write(target, [rows], rows.schema)
    retry.call(f"deleting {output.uri_of(source)}", lambda: fs.delete_file(source))
    return found.num_rows - rows.num_rows


def _move_manifests(output: Location, fs: pafs.FileSystem, retry: Retry) -> list[Manifest]:
    """`_runs/*.json` -> `_sfp/runs/`; returns every manifest (the moved ones and any moved before)."""
    selector = pafs.FileSelector(output.join(LEGACY_RUNS_DIR), allow_not_found=True)
    for entry in retry.call(f"listing {output.uri}/{LEGACY_RUNS_DIR}", lambda: fs.get_file_info(selector)):
        if entry.type != pafs.FileType.File or not entry.base_name.endswith(".json"):
            continue
        with fs.open_input_stream(entry.path) as stream:
            data = stream.read()
        run_id = entry.base_name.removesuffix(".json")
        replace_file(output, manifest_path(output, run_id), data, retry)
        fs.delete_file(entry.path)
    if fs.get_file_info(output.join(LEGACY_RUNS_DIR)).type == pafs.FileType.Directory:
        retry.call(f"deleting {output.uri}/{LEGACY_RUNS_DIR}", lambda: fs.delete_dir(output.join(LEGACY_RUNS_DIR)))
    return Manifest.read_all(output, retry)


def _identity(uri: str, manifests: list[Manifest]) -> LabelIdentity:
    """What the newest run that names a vocabulary labelled with."""
    for manifest in reversed(manifests):
        if manifest.vocabulary.classes and manifest.config_hash:
            return LabelIdentity(
                arch=manifest.model.arch,
                weights=manifest.model.weights,
                classes=manifest.vocabulary.classes,
                vocabulary_fingerprint=manifest.vocabulary.fingerprint or "",
                config=manifest.config,
                config_hash=manifest.config_hash,
            )
    raise OutputError(f"{uri}: no run manifest names the vocabulary and settings; cannot upgrade it")
