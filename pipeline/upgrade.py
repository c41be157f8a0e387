"""`upgrade_output`: move an output written by sfp-label 0.1 into the current layout, labelling nothing.

0.1 kept its data files at the output root and its manifests under `_runs/`.
Under the output's lease, each data file is rewritten into a new data folder
with the identity (vocabulary, settings) in its metadata, the manifests move
to `_sfp/runs/`, and the pointer and the card are written last: a run killed
midway leaves both layouts' parts, and running it again finishes the move.
"""

from __future__ import annotations

from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .lease import OutputLease
from .output import (
    RUN_SUCCEEDED,
    LabelIdentity,
    Manifest,
    Pointer,
    data_file,
    data_folder_name,
    legacy_files,
    manifest_path,
    new_run_id,
    write_card,
    write_parquet,
)
from .output.layout import LEGACY_RUNS_DIR, replace_file
from .output.reader import OutputError
from .retry import Retry
from .storage import Location


def upgrade_output(uri: str, storage_options: dict[str, Any] | None = None) -> Pointer:
    """Move the 0.1 output at `uri` into a data folder with a pointer and a card; returns the pointer."""
    output, retry = Location.parse(uri, storage_options), Retry()
    fs = output.filesystem()
    found = legacy_files(output, retry)
    if not found:
        raise OutputError(f"{uri}: nothing to upgrade (no data files at its root, no _runs/ folder)")
    with OutputLease(output, "sfp-label upgrade", retry=retry):
        manifests = _move_manifests(output, fs, retry)
        identity = _identity(uri, manifests)
        pointer = Pointer.read(output, retry) or Pointer(
            data=data_folder_name(new_run_id()), identity=identity, created_by="upgrade"
        )
        pointer.write(output, retry)  # first, so that a second attempt writes into the same folder
        for name in (n for n in legacy_files(output, retry) if n != LEGACY_RUNS_DIR):
            _move_data_file(output, name, pointer, retry)
        runs = sum(m.status == RUN_SUCCEEDED for m in manifests)
        write_card(output, pointer, runs, retry)
    return pointer


def _move_data_file(output: Location, name: str, pointer: Pointer, retry: Retry) -> None:
    """Rewrite one root data file into the data folder, the identity in its metadata; then delete it."""
    fs = output.filesystem()
    source, target = output.join(name), data_file(output, pointer.data, name)
    table = retry.call(f"reading {output.uri_of(source)}", lambda: pq.read_table(source, filesystem=fs))
    rows = table.replace_schema_metadata(pointer.identity.schema_metadata())
    retry.call(f"writing {output.uri_of(target)}", lambda: write_parquet(output, target, [rows], rows.schema))
    retry.call(f"deleting {output.uri_of(source)}", lambda: fs.delete_file(source))


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
