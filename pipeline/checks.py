"""`preflight`: everything a request can get wrong that is knowable before Ray or the model starts.

In order, each in seconds and without writing anything: the input exists, is
readable with these credentials and holds at least one image with the
request's extensions (the listing stops at the first one); the output is a
folder (or nothing yet) these credentials may write, laid out as this release
writes, holding no one else's files and, for incremental runs, labelled with
the same vocabulary and settings; the weights exist (a file, one HEAD for a
URI, a cached or reachable tag) for a known architecture; the vocabulary
fits the mask format; a storage endpoint's host name exists; some node can
host one actor (`cluster.py`). `offline=True` skips what touches storage,
network or the cluster, and loads no torch. Each failure is a `UserError`
naming the thing and the fix.
"""

from __future__ import annotations

import collections
import os
import posixpath
import secrets
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from sfp_core import arch_patch_size, mask_dtype_for

from .cluster import check_capacity, cluster_capacity
from .errors import (
    ForeignFilesInOutput,
    InputHasNoImages,
    InputNotFound,
    OutputLabelledDifferently,
    OutputNotADirectory,
    OutputNotWritable,
    StorageEndpointUnknown,
    access_denied,
    root_cause,
)
from .inputs import InputReader
from .inputs.probe import check_list, check_shards, check_tables
from .output import META_DIR, LabelTable, Pointer, foreign_files, is_hidden
from .output.reader import LegacyOutputLayout, legacy_advice
from .request import LabelRequest
from .retry import Retry, is_access_denied
from .storage import Location, endpoint_of, fsspec_options
from .walk import walk_local

_SHOWN_EXTENSIONS = 5
_FORMAT_CHECKS = {"webdataset": check_shards, "parquet": check_tables, "list": check_list}
# getaddrinfo's answer for a name that does not exist; a name server that does not answer is an outage.
_NO_SUCH_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


@dataclass
class InputProbe:
    """What the input's listing showed until its first image: that image, or every file it passed."""

    first_image: str | None = None
    files_seen: int = 0
    other_extensions: collections.Counter[str] = field(default_factory=collections.Counter)

    def describe(self) -> str:
        if not self.files_seen:
            return "it holds no files"
        common = ", ".join(f"{n} .{ext}" if ext else f"{n} without extension"
                           for ext, n in self.other_extensions.most_common(_SHOWN_EXTENSIONS))  # fmt: skip
        return f"it holds {self.files_seen} other files ({common})"


def preflight(
    request: LabelRequest, *, offline: bool = False, retry: Retry | None = None, verbose: bool = False
) -> None:
    """Raise the first `UserError` the request would hit; return quietly when it can run.

    Last, whether the cluster can host one actor (`cluster.check_capacity`): a cluster in RAY_ADDRESS is
    joined for that, quietly unless `verbose` (as `ensure_ray`); a local Ray is not started.
    """
    retry = retry or Retry(patience_s=request.output.storage_retry_s)
    redact = request.redactor()
    source = InputReader(request.input, redact, retry).location()
    output = Location.parse(request.output.uri, dict(request.output.storage_options))
    if offline:
        arch_patch_size(request.model.arch)  # a known ViT, read from its config: no torch
        mask_dtype_for(len(request.vocabulary))
        return
    _check_endpoint(source, "input")
    _check_endpoint(output, "output")
    try:
        _check_input(request, source, retry)
        _check_output(request, output, retry)
    except Exception as exc:
        if is_access_denied(exc):
            raise access_denied(source.uri, output.uri, redact(root_cause(exc))) from exc
        raise
    from sfp_core import check_weights  # open_clip's tags and the checkpoint readers load torch

    model = request.model
    check_weights(model.arch, model.weights, storage_options=fsspec_options(model.weights, dict(model.storage_options)))
    mask_dtype_for(len(request.vocabulary))
    check_capacity(request.resources, cluster_capacity(verbose))


def _check_endpoint(location: Location, section: str) -> None:
    """An endpoint whose host name does not exist is a typo, refused in seconds rather than retried for
    `storage_retry_s`; one that is only unreachable (or whose name server is) is an outage, left to the
    retries."""
    endpoint = endpoint_of(location)
    parts = urlsplit(f"//{endpoint}") if endpoint else None
    if parts is None or not parts.hostname:
        return
    try:
        socket.getaddrinfo(parts.hostname, parts.port)
    except socket.gaierror as exc:
        if exc.errno not in _NO_SUCH_HOST:
            return
        shown = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
        raise StorageEndpointUnknown(
            f"{section} {location.uri}: the storage endpoint {shown} does not resolve (no such host); "
            f"check endpoint_url in {section}.storage_options (or AWS_ENDPOINT_URL)"
        ) from None


def _check_input(request: LabelRequest, source: Location, retry: Retry) -> None:
    check = _FORMAT_CHECKS.get(request.input.format)
    if check is not None:
        check(request.input, source, retry)
        return
    kind = _kind(source, retry)
    if kind == pafs.FileType.NotFound:
        raise InputNotFound(f"input {source.uri} does not exist; check input.uri")
    if kind == pafs.FileType.File or request.input.allow_empty:
        return
    extensions = tuple(request.input.extensions)
    probe = probe_input(source, extensions, retry)
    if probe.first_image is None:
        raise InputHasNoImages(
            f"input {source.uri} holds no images with the extensions {', '.join(extensions)}: "
            f"{probe.describe()}. Set input.extensions, or input.allow_empty: true for a folder that may be empty"
        )


def probe_input(source: Location, extensions: tuple[str, ...], retry: Retry) -> InputProbe:
    """List the input until its first image (hidden names skipped, as the run's listing does)."""
    probe = InputProbe()

    def wanted(name: str) -> bool:
        extension = posixpath.splitext(name)[1].lower().lstrip(".")
        if extension in extensions:
            return True
        probe.files_seen += 1
        probe.other_extensions[extension] += 1
        return False

    if source.scheme == "file":
        probe.first_image = next((listed.image_id for listed in walk_local(source.path, wanted)), None)
        return probe
    fs = source.filesystem()
    pending = [source.path]
    while pending and probe.first_image is None:  # breadth first, one directory listing at a time
        directory = pending.pop(0)
        selector = pafs.FileSelector(directory, allow_not_found=True)
        entries = retry.call(f"listing {source.uri_of(directory)}", lambda s=selector: fs.get_file_info(s))
        for entry in entries:
            if is_hidden(entry.base_name):
                continue
            if entry.type == pafs.FileType.Directory:
                pending.append(entry.path)
            elif entry.type == pafs.FileType.File and wanted(entry.base_name):
                probe.first_image = entry.path
                break
    return probe


def _check_output(request: LabelRequest, output: Location, retry: Retry) -> None:
    kind = _kind(output, retry)
    if kind == pafs.FileType.File:
        raise OutputNotADirectory(
            f"output {output.uri} is a file; output.uri must name a folder (or prefix) for the run's files"
        )
    if kind == pafs.FileType.Directory:
        _check_existing_output(request, output, retry)
    _check_writable(output, retry)


def _check_existing_output(request: LabelRequest, output: Location, retry: Retry) -> None:
    """An existing output: this release's layout, no files of others, and (incremental) the same labels."""
    table = LabelTable(output, retry)
    legacy = table.legacy_files()
    if legacy:
        raise LegacyOutputLayout(legacy_advice(output.uri, legacy))
    pointer = table.pointer()  # also for overwrites: a run deletes what it does not name
    if request.incremental:
        check_same_labels(request, output, pointer)
    if not request.output.allow_foreign_files:
        foreign = foreign_files(output, retry)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ForeignFilesInOutput(
                f"output {output.uri} holds files sfp-label did not write ({shown}); use an output folder "
                "of its own, or set output.allow_foreign_files: true (they are then left alone, never deleted)"
            )


def check_same_labels(request: LabelRequest, output: Location, pointer: Pointer | None) -> None:
    """One output, one vocabulary and one set of SFP settings: an incremental run may not mix in others."""
    if pointer is None:
        return
    conflict = pointer.identity.conflict_with(request.identity())
    if conflict:
        raise OutputLabelledDifferently(
            f"output {output.uri} was labelled with {pointer.identity.describe()}; this run has {conflict}. "
            "Label into a new output, or use output.mode: overwrite to replace its labels"
        )


def _check_writable(output: Location, retry: Retry) -> None:
    """Local: the folder (or its nearest existing parent) is writable. Elsewhere: one small object is
    written into `_sfp/` and deleted, which is the only proof object stores give."""
    if output.scheme == "file":
        existing = output.path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputNotWritable(f"output {output.uri}: {existing} is not writable by this user")
        return
    fs = output.filesystem()
    probe = output.join(META_DIR, f"preflight-{secrets.token_hex(6)}")

    def write_and_delete() -> None:
        with fs.open_output_stream(probe) as stream:
            stream.write(b"sfp-label preflight")
        fs.delete_file(probe)

    retry.call(f"writing a test object under {output.uri}", write_and_delete)


def _kind(location: Location, retry: Retry) -> pafs.FileType:
    fs = location.filesystem()
    return retry.call(f"looking at {location.uri}", lambda: fs.get_file_info(location.path).type)
