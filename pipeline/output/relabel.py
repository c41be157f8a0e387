"""Error rows an incremental run labels again: their old rows leave the output first.

A file that was unreadable because the bucket was briefly gone, or a
permission was missing, deserves another try; an image that is not an image
does not. `Destination.retry_errors` chooses (transient | all | none). Each
data file holding rows to retry is rewritten without them onto its own name
(`parts.write_parquet`: a rename locally, one PUT on object stores, so one
atomic replacement per file and no copy), before labelling starts. At no
moment does an image have two rows: after a crash the dropped images are
simply missing, and the next incremental run labels them like new ones.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ..retry import Retry
from ..storage import Location
from .parts import write_parquet
from .rows import ERROR_CLASS_TRANSIENT, STATUS_ERROR, error_class
from .versions import current_files


def drop_rows_to_relabel(output: Location, policy: str, retry: Retry) -> int:
    """Remove the error rows `policy` retries from the committed files; returns how many were removed."""
    if policy == "none":
        return 0
    fs = output.filesystem()
    files = current_files(output, retry)
    if not files:
        return 0
    dataset = pads.dataset(files, filesystem=fs, format="parquet")
    errors = retry.call(
        f"reading the error rows of {output.uri}",
        lambda: dataset.to_table(columns=["error", "__filename"], filter=pc.field("status") == STATUS_ERROR),
    )
    paths = {
        path
        for path, error in zip(errors.column("__filename").to_pylist(), errors.column("error").to_pylist(), strict=True)
        if policy == "all" or error_class(error or "") == ERROR_CLASS_TRANSIENT
    }
    return sum(_rewrite_without(output, path, policy, retry) for path in sorted(paths))


def _retried(table: pa.Table, policy: str) -> pa.Array:
    is_error = pc.equal(table.column("status"), STATUS_ERROR)
    if policy == "all":
        return is_error
    transient = pa.array([error_class(e or "") == ERROR_CLASS_TRANSIENT for e in table.column("error").to_pylist()])
    return pc.and_(is_error, transient)


def _rewrite_without(output: Location, path: str, policy: str, retry: Retry) -> int:
    """Replace one data file by itself without its retried rows (or delete it when none remain)."""
    fs = output.filesystem()
    table = retry.call(f"reading {output.uri_of(path)}", lambda: pq.read_table(path, filesystem=fs))
    keep = pc.invert(_retried(table, policy))
    kept = table.filter(keep)
    if kept.num_rows == table.num_rows:
        return 0
    if kept.num_rows == 0:
        retry.call(f"deleting {output.uri_of(path)}", lambda: fs.delete_file(path))
        return table.num_rows
    retry.call(f"replacing {output.uri_of(path)}", lambda: write_parquet(output, path, [kept], kept.schema))
    return table.num_rows - kept.num_rows
