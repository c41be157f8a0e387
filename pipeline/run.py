"""`label`: wires source -> decode -> predict -> encode -> sink into one streaming Ray Data job."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import ray
from ray.data import DataContext

from sfp_core import SFPConfig, Vocabulary, arch_patch_size

from .decode import decode_batch
from .encode import encode_batch
from .lease import LeaseLost, OutputLease
from .manifest import RunSummary, iso, manifest_path, new_run_id, package_versions, write_manifest
from .predict import SFPPredictor
from .resume import drop_existing, existing_ids
from .retry import Retry, StorageUnavailable
from .sink import StagedParquetSink, commit_overwrite, remove_staging
from .source import list_images, normalise_extensions, read_files
from .storage import Location, Redactor, public_options, public_uri, redacted_logs

log = logging.getLogger("pipeline")

MODES = ("incremental", "overwrite")
# CPU stages are short and partly I/O-bound, so they ask for half a CPU; a
# resource shape unlike the predictor's also keeps Ray from fusing decoding
# into the actor, where the model would wait for it.
CPU_TASK_CPUS = 0.5
ACTOR_CPUS = 1.0
DECODE_BATCH = 16
# A killed actor is replaced (Ray restarts it: one model load) and its batch retried; a batch that
# kills its actor this many times fails the run instead of looping (Ray Data's default is forever).
ACTOR_TASK_RETRIES = 3


def label(
    input_uri: str,
    output_uri: str,
    *,
    vocabulary: Vocabulary,
    arch: str = "ViT-B-16",
    weights: str = "openai",
    weights_sha256: str | None = None,
    config: SFPConfig | None = None,
    extensions: Sequence[str] = ("jpg", "jpeg", "png"),
    input_storage_options: dict[str, Any] | None = None,
    output_storage_options: dict[str, Any] | None = None,
    mode: str = "incremental",
    confidence: bool = False,
    actors: tuple[int, int] = (1, 1),
    gpus_per_actor: float = 0.0,
    batch_size: int = 8,
    max_pixels: int = 178_956_970,
    run_name: str | None = None,
    progress: bool = True,
    weights_storage_options: dict[str, Any] | None = None,
    rows_per_file: int = 1000,
    storage_retry_s: float = 120.0,
) -> RunSummary:
    """Label every image under `input_uri` with SFP and write one Parquet row per image under `output_uri`.

    `incremental` skips image ids already in the output and commits each
    finished file at once (a killed run loses at most the files in flight);
    `overwrite` stages the whole run and swaps it in only when it succeeds.
    Storage calls ride out outages of up to `storage_retry_s` seconds each;
    longer ones fail the run with `StorageUnavailable`. One run at a time
    writes an output (`LeaseHeld` otherwise).
    """
    config = config or SFPConfig()
    min_actors, max_actors = _check_args(
        mode, actors, gpus_per_actor, batch_size, max_pixels, rows_per_file, storage_retry_s
    )
    exts = normalise_extensions(extensions)
    source = Location.parse(input_uri, input_storage_options)
    output = Location.parse(output_uri, output_storage_options)
    redact = Redactor.for_options(
        input_storage_options, output_storage_options, weights_storage_options, uris=(input_uri, output_uri, weights)
    )
    retry = Retry(patience_s=storage_retry_s)
    run_id = new_run_id()
    started = time.time()
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "run_name": run_name,
        "status": "running",
        "started_at": iso(started),
        "input": {"uri": source.uri, "storage_options": public_options(input_storage_options), "extensions": exts},
        "output": {
            "uri": output.uri,
            "storage_options": public_options(output_storage_options),
            "mode": mode,
            "confidence": confidence,
            "rows_per_file": rows_per_file,
        },
        "model": {"arch": arch, "weights": public_uri(weights), "weights_sha256": weights_sha256},
        "vocabulary": {"classes": [list(c) for c in vocabulary.classes], "fingerprint": vocabulary.fingerprint()},
        "config": config.to_dict(),
        "config_hash": config.config_hash(),
        "resources": {"actors": [min_actors, max_actors], "gpus_per_actor": gpus_per_actor, "batch_size": batch_size},
        "max_pixels": max_pixels,
        "versions": package_versions(),
    }
    with redacted_logs(redact), OutputLease(output, run_name or run_id, retry=retry) as lease:
        remove_staging(output, retry)  # what dead runs left staged
        write_manifest(output, run_id, manifest, redact, retry)
        sink = StagedParquetSink(
            output,
            run_id,
            commit_each_file=mode == "incremental",
            rows_per_file=rows_per_file,
            claim=lease.claim,
            retry=retry,
        )
        try:
            _ensure_ray()
            with _data_context(progress):
                todo, total = _todo(source, output, exts, retry, skip_existing=mode == "incremental")
                pending = todo.count()
                if pending:
                    labelled = _stages(
                        todo,
                        source=source,
                        redact=redact,
                        retry=retry,
                        predictor={
                            "arch": arch,
                            "weights": weights,
                            "weights_sha256": weights_sha256,
                            "weights_storage_options": weights_storage_options,
                            "classes": [list(c) for c in vocabulary.classes],
                            "config": config.to_dict(),
                            "device": "cuda" if gpus_per_actor > 0 else "cpu",
                            "threads": max(1, int(ray.cluster_resources().get("CPU", 1)) // max_actors),
                            "confidence": confidence,
                        },
                        decode={
                            "short_side": config.short_side,
                            "long_side": config.long_side,
                            "patch": arch_patch_size(arch),
                            "max_pixels": max_pixels,
                        },
                        encode={
                            "model": f"{arch}:{public_uri(weights)}",
                            "config_hash": config.config_hash(),
                            "run_id": run_id,
                        },
                        actors=(min_actors, max_actors),
                        gpus_per_actor=gpus_per_actor,
                        batch_size=batch_size,
                    )
                    labelled.write_datasink(sink, ray_remote_args={"num_cpus": CPU_TASK_CPUS})
            written = sum(f.rows for f in sink.written)
            if written != pending:
                raise RuntimeError(f"wrote {written} rows for {pending} images; not committing a run that lost rows")
            lease.check()
            if mode == "overwrite":
                lease.claim.verify(retry)
                commit_overwrite(output, run_id, sink.written, retry)
            remove_staging(output, retry, run_id)
        except BaseException as exc:
            cause = _unwrapped(exc)
            _record_failure(output, run_id, manifest, cause, sink, redact, retry.brief())
            if cause is not exc and isinstance(cause, (StorageUnavailable, LeaseLost)):
                raise cause from exc  # our own message on top, not Ray's retry hints
            raise

        ended = time.time()
        ok = sum(f.ok for f in sink.written)
        summary = RunSummary(
            run_id=run_id,
            run_name=run_name,
            input_uri=source.uri,
            output_uri=output.uri,
            mode=mode,
            ok=ok,
            error=written - ok,
            skipped=total - pending,
            total=total,
            seconds=round(ended - started, 3),
            images_per_second=round(written / (ended - started), 3),
            manifest_uri=output.uri_of(manifest_path(output, run_id)),
            config_hash=config.config_hash(),
            files=tuple(sorted(f.name for f in sink.written)),
        )
        manifest.update(
            status="succeeded",
            ended_at=iso(ended),
            counts={"ok": summary.ok, "error": summary.error, "skipped": summary.skipped, "total": total},
            seconds=summary.seconds,
            images_per_second=summary.images_per_second,
            files=list(summary.files),
        )
        write_manifest(output, run_id, manifest, redact, retry)
    line = redact(summary.one_line())
    log.info(line)
    if progress:
        print(line, file=sys.stderr, flush=True)
    return summary


def _todo(
    source: Location, output: Location, extensions: tuple[str, ...], retry: Retry, *, skip_existing: bool
) -> tuple[ray.data.Dataset, int]:
    """The images this run labels, and how many the input holds.

    The listing is materialised in the object store (paths only, never in
    the driver) so it is taken once and counted exactly; incremental runs
    then drop the ids the output already has.
    """
    listed = list_images(source, extensions, CPU_TASK_CPUS, retry).materialize()
    todo = listed
    if skip_existing:
        existing = ray.remote(existing_ids).options(num_cpus=CPU_TASK_CPUS).remote(output, retry)
        todo = listed.map_batches(
            drop_existing,
            batch_format="pyarrow",
            batch_size=None,
            num_cpus=CPU_TASK_CPUS,
            fn_kwargs={"existing": existing},
        ).materialize()
    return todo, listed.count()


def _unwrapped(exc: BaseException) -> BaseException:
    """The exception a Ray task raised, without Ray's wrapper (whose text ends in Ray's own hints)."""
    cause = getattr(exc, "cause", None)  # RayTaskError keeps the original here
    return cause if isinstance(cause, BaseException) else exc


def _root_cause(exc: BaseException) -> str:
    """One line: the exception type and the last line of its message (Ray wraps the cause's traceback)."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def _record_failure(
    output: Location,
    run_id: str,
    manifest: dict[str, Any],
    exc: BaseException,
    sink: StagedParquetSink,
    redact: Redactor,
    retry: Retry,
) -> None:
    """Mark the run failed in its manifest and drop its staging; files already committed (incremental)
    are listed, they stay valid. Best effort: the next run clears what is left."""
    manifest.update(status="failed", ended_at=iso(time.time()), error=_root_cause(exc))
    manifest["files"] = [f.name for f in sink.written] if sink.commit_each_file else []
    try:
        write_manifest(output, run_id, manifest, redact, retry)
        remove_staging(output, retry, run_id)
    except Exception as record_exc:  # the run's own error is the one to raise
        log.warning("could not record the failed run %s: %s", run_id, redact(str(record_exc)))


def _stages(
    todo: ray.data.Dataset,
    *,
    source: Location,
    redact: Redactor,
    retry: Retry,
    predictor: dict[str, Any],
    encode: dict[str, Any],
    decode: dict[str, Any],
    actors: tuple[int, int],
    gpus_per_actor: float,
    batch_size: int,
) -> ray.data.Dataset:
    """read bytes -> decode and resize (CPU tasks) -> SFP (actor pool) -> PNG encode (CPU tasks)."""
    cpu = {"batch_format": "pyarrow", "num_cpus": CPU_TASK_CPUS}
    return (
        # Small blocks first, so many decode tasks feed the actors rather than one per listing block.
        todo.repartition(target_num_rows_per_block=DECODE_BATCH)
        .map_batches(
            read_files, batch_size=DECODE_BATCH, fn_kwargs={"location": source, "redact": redact, "retry": retry}, **cpu
        )
        .map_batches(decode_batch, batch_size=DECODE_BATCH, fn_kwargs=decode, **cpu)
        .map_batches(
            SFPPredictor,
            batch_size=batch_size,
            batch_format="pyarrow",
            fn_constructor_kwargs=predictor,
            concurrency=actors,
            num_cpus=ACTOR_CPUS,
            num_gpus=gpus_per_actor,
            max_restarts=-1,
            max_task_retries=ACTOR_TASK_RETRIES,
        )
        .map_batches(encode_batch, batch_size=None, fn_kwargs=encode, **cpu)
    )


def _check_args(
    mode: str,
    actors: tuple[int, int],
    gpus_per_actor: float,
    batch_size: int,
    max_pixels: int,
    rows_per_file: int,
    storage_retry_s: float,
) -> tuple[int, int]:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    min_actors, max_actors = (int(a) for a in actors)
    if not 1 <= min_actors <= max_actors:
        raise ValueError(f"actors must be (min, max) with 1 <= min <= max, got {tuple(actors)}")
    if gpus_per_actor < 0:
        raise ValueError(f"gpus_per_actor must be >= 0, got {gpus_per_actor}")
    for name, value in (("batch_size", batch_size), ("max_pixels", max_pixels), ("rows_per_file", rows_per_file)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if storage_retry_s < 0:
        raise ValueError(f"storage_retry_s must be >= 0, got {storage_retry_s}")
    return min_actors, max_actors


def _ensure_ray() -> None:
    """Use the running Ray; else join RAY_ADDRESS's cluster; else start a local one (never a stale cluster)."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(address="local", include_dashboard=False)


@contextlib.contextmanager
def _data_context(progress: bool) -> Iterator[None]:
    """Progress bars as asked; a stage's own exception (e.g. StorageUnavailable) rather than Ray's wrapper."""
    ctx = DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.raise_original_map_exception
    ctx.enable_progress_bars, ctx.raise_original_map_exception = progress, True
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.raise_original_map_exception = saved
