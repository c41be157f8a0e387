"""`compact_output`: the current version's data files rewritten into files of `rows_per_file` rows, as a new
version, labelling nothing (`sfp-label compact`).

Runs stopped by Ctrl-C, SIGTERM, `commit_every_s` or a kill leave files
shorter than `rows_per_file`; many small files slow every reader. Compacting
never changes files readers may be in: Ray tasks merge consecutive files
(`output.merge_parts`, the sources kept) into a new data folder, and the
pointer flips to it in one write, as an overwrite does. The replaced folder
stays `KEEP_REPLACED_S`. Under the output's lease, so no run writes meanwhile.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import ray

from .errors import unwrap_task_error
from .lease import OutputLease
from .output import (
    DEFAULT_ROWS_PER_FILE,
    FileCount,
    LabelTable,
    OutputError,
    PartRecord,
    PartWriting,
    data_file_name,
    data_folder_name,
    merge_parts,
    new_run_id,
)
from .ray_session import ensure_ray
from .retry import Retry
from .storage import Location

MERGE_CPUS = 0.5


@dataclass(frozen=True)
class Compaction:
    """What a compaction did: the folders, and the files before and after."""

    before: str
    after: str
    files_before: int
    files_after: int
    rows: int


def compact_output(
    uri: str, storage_options: dict[str, Any] | None = None, rows_per_file: int = DEFAULT_ROWS_PER_FILE
) -> Compaction:
    """Rewrite the output at `uri` into files of at most `rows_per_file` rows (a file already longer stays
    whole) as a new version; returns what changed."""
    output, retry = Location.parse(uri, storage_options), Retry()
    table = LabelTable(output, retry)
    with OutputLease(output, "sfp-label compact", retry=retry) as lease:
        pointer = table.tidy(table.pointer())
        if pointer is None:
            raise OutputError(f"{uri}: no labelled output to compact (no {output.uri}/_sfp/current.json)")
        counts = table.counts(pointer.data)
        groups = _groups(counts.files, rows_per_file)
        rows = sum(count.rows for count in counts.files.values())
        if len(groups) == len(counts.files):  # every file already as long as it can be
            return Compaction(pointer.data, pointer.data, len(groups), len(groups), rows)
        run_id = new_run_id()
        folder = data_folder_name(run_id)
        records = _merged(PartWriting(output, run_id, pointer.identity.schema(), retry, rows_per_file), groups, folder)
        if sum(r.rows for r in records) != rows:
            raise RuntimeError(f"compacting {uri} wrote {sum(r.rows for r in records)} of {rows} rows; not committing")
        lease.claim.verify(retry)
        current = pointer.replaced_by(folder, pointer.identity, run_id, time.time())
        table.replace_version(current)
        table.write_card(current, {r.file: FileCount(size=r.bytes, rows=r.rows, ok=r.ok) for r in records})
    return Compaction(pointer.data, folder, len(counts.files), len(records), rows)


def _merged(writing: PartWriting, groups: list[list[str]], folder: str) -> list[PartRecord]:
    """Each group merged into one data file of `folder` by a Ray task (the sources kept)."""
    ensure_ray()
    merge = ray.remote(merge_parts).options(num_cpus=MERGE_CPUS)
    name = functools.partial(data_file_name, writing.run_id)
    tasks = [merge.remote(writing, group, folder, name(n), False) for n, group in enumerate(groups)]
    try:
        return ray.get(tasks)
    except ray.exceptions.RayTaskError as exc:
        raise unwrap_task_error(exc) from None


def _groups(files: dict[str, FileCount], rows_per_file: int) -> list[list[str]]:
    """Consecutive files (in name order, which is commit order within a run) in groups of at most
    `rows_per_file` rows; a file holding more is a group of its own."""
    groups: list[list[str]] = []
    group: list[str] = []
    rows = 0
    for name in sorted(files):
        count = files[name].rows
        if group and rows + count > rows_per_file:
            groups.append(group)
            group, rows = [], 0
        group.append(name)
        rows += count
    if group:
        groups.append(group)
    return groups
