"""`label(request)`: wires inputs -> decode -> predict -> encode -> sink into one streaming Ray Data job,
under the output's lease, with a manifest per run (docs/design.md, "Data flow")."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import ray
from ray.data import DataContext

from sfp_core import SFPLabelError

from .checks import check_same_labels, preflight
from .cluster import ACTOR_CPUS, waiting_reports
from .decode import decode_batch
from .encode import encode_batch
from .errors import access_denied, root_cause, unwrap_task_error
from .inputs import InputReader, KnownIds, Tally, start_ledger
from .lease import OutputLease
from .output import (
    FileCount,
    LabelTable,
    Manifest,
    PartWriting,
    Pointer,
    RunSummary,
    data_folder_name,
    iso,
    manifest_path,
    new_run_id,
    package_versions,
    stage_parts,
)
from .output.manifest import InputRecord, ModelRecord, OutputRecord, ResourcesRecord, VocabularyRecord
from .predict import SFPPredictor
from .progress import ProgressCounter, RunDisplay
from .ray_session import ensure_ray
from .request import LabelRequest, Resources
from .resume import drop_existing
from .retry import Retry, is_access_denied
from .roster import run_actors
from .settings import StageSettings
from .sink import FlushTimer, PartCommitter, WriterSettings, WrittenFile
from .storage import Location, Redactor, public_options, public_uri, redacted_logs

log = logging.getLogger("pipeline")
T = TypeVar("T")

# CPU stages are short and partly I/O-bound, so they ask for half a CPU; a
# resource shape unlike the predictor's also keeps Ray from fusing decoding
# into the actor, where the model would wait for it.
CPU_TASK_CPUS = 0.5
DECODE_BATCH = 16
# A killed actor is replaced (Ray restarts it: one model load) and its batch retried; a batch that
# kills its actor this many times fails the run instead of looping (Ray Data's default is forever).
ACTOR_TASK_RETRIES = 3


@dataclass(frozen=True)
class _Run:
    """One run of a request: its id, where it reads and writes, and how it retries and redacts."""

    request: LabelRequest
    run_id: str
    started: float
    input: InputReader
    source: Location
    output: Location
    redact: Redactor
    retry: Retry
    display: RunDisplay

    @classmethod
    def start(cls, request: LabelRequest, display: RunDisplay) -> _Run:
        redact, retry = request.redactor(), Retry(patience_s=request.output.storage_retry_s)
        reader = InputReader(request.input, redact, retry)
        return cls(
            request=request,
            run_id=new_run_id(),
            started=time.time(),
            input=reader,
            source=reader.location(),
            output=Location.parse(request.output.uri, dict(request.output.storage_options)),
            redact=redact,
            retry=retry,
            display=display,
        )

    def manifest(self) -> Manifest:
        request, config = self.request, self.request.config
        return Manifest(
            run_id=self.run_id,
            run_name=request.run_name,
            started_at=iso(self.started),
            input=InputRecord(
                uri=self.input.uri(),
                format=request.input.format,
                storage_options=public_options(dict(request.input.storage_options)),
                extensions=list(request.input.extensions),
                fields=dict(request.input.fields),
            ),
            output=OutputRecord(
                uri=self.output.uri,
                storage_options=public_options(dict(request.output.storage_options)),
                mode=request.output.mode,
                confidence=request.output.confidence,
                rows_per_file=request.output.rows_per_file,
            ),
            model=ModelRecord(
                arch=request.model.arch,
                weights=public_uri(request.model.weights),
                weights_sha256=request.model.weights_sha256,
            ),
            vocabulary=VocabularyRecord(
                classes=[list(c) for c in request.vocabulary.classes], fingerprint=request.vocabulary.fingerprint()
            ),
            config=config.to_dict(),
            config_hash=config.config_hash(),
            resources=ResourcesRecord(
                actors=list(request.resources.actors),
                gpus_per_actor=request.resources.gpus_per_actor,
                batch_size=request.resources.batch_size,
            ),
            max_pixels=request.resources.max_pixels,
            versions=package_versions(),
        )

    @property
    def table(self) -> LabelTable:
        """The output, read and changed only through this."""
        return LabelTable(self.output, self.retry)

    def part_writing(self) -> PartWriting:
        """What the workers that write this run's files need to know."""
        schema = self.request.identity().schema()
        return PartWriting(self.output, self.run_id, schema, self.retry, self.request.output.rows_per_file)

    def summary(self, writer: PartCommitter, total: int, pending: int) -> RunSummary:
        ended = time.time()
        written = writer.rows
        ok = sum(f.ok for f in writer.written)
        return RunSummary(
            run_id=self.run_id,
            run_name=self.request.run_name,
            input_uri=self.input.uri(),
            output_uri=self.output.uri,
            mode=self.request.output.mode,
            ok=ok,
            error=written - ok,
            skipped=total - pending,
            total=total,
            seconds=round(ended - self.started, 3),
            images_per_second=round(written / (ended - self.started), 3),
            manifest_uri=self.output.uri_of(manifest_path(self.output, self.run_id)),
            config_hash=self.request.config.config_hash(),
            files=tuple(sorted(f.name for f in writer.written)),
        )


def label(request: LabelRequest, display: RunDisplay | None = None) -> RunSummary:
    """Label every image of `request.input` with SFP, one Parquet row per image under `request.output`.

    `incremental` skips image ids already in the output and commits a file
    every `rows_per_file` rows or `commit_every_s` seconds, and what is
    finished when interrupted; `overwrite` writes a new version and flips the
    output to it only when the run succeeds. Storage calls ride out outages
    of `output.storage_retry_s` seconds each. `display` receives progress.
    Raises a `UserError` for what the request got wrong (`preflight`, before
    Ray starts), a `RetryableError` for storage or cluster trouble,
    `LeaseHeld` when another run writes the output.
    """
    run = _Run.start(request, display or RunDisplay())
    preflight(request, retry=run.retry, verbose=run.display.verbose)
    manifest = run.manifest()
    with redacted_logs(run.redact), OutputLease(run.output, request.run_name or run.run_id, retry=run.retry) as lease:
        previous = _prepare_output(run)
        manifest.write(run.output, run.redact, run.retry)
        folder = _data_folder(run, previous)
        ensure_ray(verbose=run.display.verbose)
        if request.incremental:
            again = _in_a_task(LabelTable.drop_rows_to_relabel, run.table, request.output.retry_errors)
            if again:
                log.info("%d error rows (%s) will be labelled again", again, request.output.retry_errors)
        present = run.table.file_names(folder)
        writer = _writer(run, folder, lease)
        try:
            with waiting_reports(request.resources):
                pending, total = _label_todo(run, writer)
            current = _commit(run, lease, writer, pending, previous, present)
        except BaseException as exc:
            writer.abandon()
            cause = _user_facing(exc, run)
            _record_failure(run, manifest, cause, writer)
            if cause is exc:
                raise
            raise cause from exc
        summary = run.summary(writer, total, pending)
        manifest.succeeded(summary, time.time()).write(run.output, run.redact, run.retry)
        _write_card(run, current, written=writer.written)
    log.info(run.redact(summary.one_line()))
    return summary


def _in_a_task(work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` run by a Ray task rather than here, for work proportional to the output's bytes (the
    driver plans and commits); its own error is raised, not Ray's wrapper."""
    try:
        return ray.get(ray.remote(work).options(num_cpus=CPU_TASK_CPUS).remote(*args))
    except ray.exceptions.RayTaskError as exc:
        raise unwrap_task_error(exc) from None


def _writer(run: _Run, folder: str, lease: OutputLease) -> PartCommitter:
    destination = run.request.output
    settings = WriterSettings(destination.rows_per_file, destination.commit_every_s, run.request.incremental)
    return PartCommitter(run.part_writing(), folder, settings, claim=lease.claim, merge_cpus=CPU_TASK_CPUS)


def _prepare_output(run: _Run) -> Pointer | None:
    """Under the lease: clear what dead runs left, repair a stale card, and check the labels still match."""
    pointer = run.table.tidy(run.table.pointer())
    if pointer is not None:
        if run.request.incremental:  # again: another run may have overwritten it since preflight
            check_same_labels(run.request, run.output, pointer)
        if not run.table.card_is_current(pointer):
            _write_card(run, pointer)
    return pointer


def _data_folder(run: _Run, pointer: Pointer | None) -> str:
    """Where this run's files go: the current data folder (incremental), else a new one of its own.

    The first incremental run of an output creates the folder's pointer before writing any file into it.
    """
    if run.request.incremental and pointer is not None:
        return pointer.data
    folder = data_folder_name(run.run_id)
    if run.request.incremental:
        run.table.set_pointer(Pointer(data=folder, identity=run.request.identity(), created_by=run.run_id))
    return folder


def _write_card(
    run: _Run, pointer: Pointer, table: LabelTable | None = None, written: Sequence[WrittenFile] = ()
) -> None:
    """(Re)write the dataset card, unless the README.md there is someone else's (`allow_foreign_files`);
    `written`: the files this run committed, counted from their records."""
    known = {f.name: FileCount(size=f.bytes, rows=f.rows, ok=f.ok) for f in written}
    if not (table or run.table).write_card(pointer, known):
        log.warning("not writing a dataset card: %s holds a README.md sfp-label did not write", run.output.uri)


def _label_todo(run: _Run, writer: PartCommitter) -> tuple[int, int]:
    """Run the stages over what is left to label, committing the files the workers write;
    (images labelled, images in the input)."""
    ensure_ray(verbose=run.display.verbose)
    with _data_context(run.display):
        plan = run.input.plan(CPU_TASK_CPUS).materialize()  # taken once, held in the object store
        if run.input.per_image_plan:
            return _label_images(run, writer, plan)
        return _label_units(run, writer, plan)


def _label_images(run: _Run, writer: PartCommitter, listed: ray.data.Dataset) -> tuple[int, int]:
    """A plan with a row per image: drop those labelled, count the rest, label them."""
    todo = listed
    if run.request.incremental:
        todo = listed.map_batches(
            drop_existing,
            batch_format="pyarrow",
            batch_size=None,
            num_cpus=CPU_TASK_CPUS,
            fn_kwargs={"existing": _existing_ids(run)},
        ).materialize()
    pending, total = todo.count(), listed.count()
    counter = ProgressCounter(total=pending, skipped=total - pending, display=run.display)
    counter.report()
    if pending:
        with _stages(todo, run, KnownIds(), None) as records:
            _write_rows(run, writer, records, counter)
    return pending, total


def _label_units(run: _Run, writer: PartCommitter, units: ray.data.Dataset) -> tuple[int, int]:
    """A plan with a row per shard or row group: the reading skips what is labelled and tells the ledger."""
    planned = units.count()
    counter = ProgressCounter(
        total=None, skipped=0, display=run.display, units_total=planned, unit_name=run.input.unit_name
    )
    counter.report()
    if not planned:
        return 0, 0
    known = KnownIds(_existing_ids(run) if run.request.incremental else None)
    ledger = start_ledger()
    try:
        todo = units
        if run.request.incremental:  # units with nothing new are read now, so a no-op run starts no actor
            todo = run.input.unlabelled_units(units, known, ledger, CPU_TASK_CPUS).materialize()
            probed: Tally = ray.get(ledger.tally.remote())
            counter.read_units(probed.units_done, probed.skipped)
            counter.report()
        if todo.count():
            with _stages(todo, run, known, ledger) as records:
                _write_rows(run, writer, records, counter, ledger)
        tally: Tally = ray.get(ledger.tally.remote())
    finally:
        ray.kill(ledger)
    counter.read_units(tally.units_done, tally.skipped)
    counter.report()
    if tally.units_done != planned:
        raise RuntimeError(f"read {tally.units_done} of {planned} {run.input.unit_name}; not committing a partial run")
    return tally.emitted, tally.samples


def _existing_ids(run: _Run) -> ray.ObjectRef:
    """The output's ids, read by a task into the object store (never into the driver)."""
    return ray.remote(LabelTable.image_ids).options(num_cpus=CPU_TASK_CPUS).remote(run.table)


def _write_rows(
    run: _Run,
    writer: PartCommitter,
    records: ray.data.Dataset,
    counter: ProgressCounter,
    ledger: ray.actor.ActorHandle | None = None,
) -> None:
    """Stream the records of the parts the workers staged into the committer, telling the counter (and
    asking the ledger how far reading is)."""
    asked = None
    try:
        with FlushTimer(writer):
            # No prefetching: with Ray's default of one, a record is handed over only once the next exists, so
            # a finished batch waited a whole batch more for the bar and for the commit on Ctrl-C.
            for batch in records.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
                if ledger is not None:
                    asked = _units_read(ledger, asked, counter)
                counter.add(*writer.add(batch))
    finally:
        if run.request.incremental:
            writer.flush()  # what is finished stays, also when interrupted
    writer.flush()


def _units_read(ledger: ray.actor.ActorHandle, asked: ray.ObjectRef | None, counter: ProgressCounter) -> ray.ObjectRef:
    """Take the ledger's answer if it came (without waiting for it), and ask again."""
    if asked is not None:
        ready, _ = ray.wait([asked], timeout=0)
        if not ready:
            return asked
        tally = ray.get(asked)
        counter.read_units(tally.units_done, tally.skipped)
    return ledger.tally.remote()


def _commit(
    run: _Run, lease: OutputLease, writer: PartCommitter, pending: int, previous: Pointer | None, present: set[str]
) -> Pointer:
    """Check every image got its row, then (overwrite) flip the pointer to the run's folder; the pointer after.

    `present`: the data files the folder held when the run started.
    """
    if writer.rows != pending:
        raise RuntimeError(f"wrote {writer.rows} rows for {pending} images; not committing a run that lost rows")
    lease.check()
    # All of it: besides this run's, what a dead run's late writes put there after `tidy` (an S3 upload
    # still in flight when that run failed completes once the storage is back).
    run.table.remove_staging()
    folder = writer.folder
    late = run.table.remove_late_files(folder, present | {f.name for f in writer.written})
    if late:
        log.warning("removed %d data files a dead run wrote after this run started: %s", len(late), late[:3])
    if run.request.incremental:
        return run.table.pointer_as_written() or previous
    lease.claim.verify(run.retry)
    identity = run.request.identity()
    current = (
        previous.replaced_by(folder, identity, run.run_id, time.time())
        if previous
        else Pointer(data=folder, identity=identity, created_by=run.run_id)
    )
    run.table.replace_version(current)
    return current


@contextlib.contextmanager
def _stages(
    todo: ray.data.Dataset, run: _Run, known: KnownIds, ledger: ray.actor.ActorHandle | None
) -> Iterator[ray.data.Dataset]:
    """read bytes -> decode and resize (CPU tasks) -> SFP (actor pool) -> PNG encode and staged Arrow parts (CPU
    tasks): a record per staged part, so per actor batch for files and lists on CPU actors, reaches the driver."""
    settings = StageSettings.derive(run.request, run.run_id, ray.cluster_resources().get("CPU", 1))
    read = run.input.read(todo, known, ledger, CPU_TASK_CPUS, block_rows=_rows_per_block(run.request.resources))
    with run_actors() as roster:  # the model actors end with the stages, however they end
        with warnings.catch_warnings():
            # `max_task_retries` has no named parameter yet, and Ray's default (retry forever) would loop on a
            # batch that kills its actor every time; passing it through ray_remote_args is deprecated, not gone.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=Warning)
            records = _stage_chain(read, run, settings, roster)
        yield records


def _stage_chain(
    read: ray.data.Dataset, run: _Run, settings: StageSettings, roster: ray.actor.ActorHandle
) -> ray.data.Dataset:
    cpu = {"batch_format": "pyarrow", "num_cpus": CPU_TASK_CPUS}
    resources = run.request.resources
    decode_rows = _rows_per_block(resources)
    return (
        read.map_batches(decode_batch, batch_size=decode_rows, fn_kwargs={"settings": settings.decode}, **cpu)
        .map_batches(
            SFPPredictor,
            batch_size=resources.batch_size,
            batch_format="pyarrow",
            fn_constructor_args=(settings.predictor, roster),
            compute=ray.data.ActorPoolStrategy(min_size=resources.actors[0], max_size=resources.actors[1]),
            num_cpus=ACTOR_CPUS,
            num_gpus=resources.gpus_per_actor,
            max_task_retries=ACTOR_TASK_RETRIES,  # a killed actor is always restarted (Ray's default)
        )
        .map_batches(encode_batch, batch_size=None, fn_kwargs={"settings": settings.encode}, **cpu)
        .map_batches(stage_parts, batch_size=None, fn_kwargs={"writing": run.part_writing()}, **cpu)
    )


def _rows_per_block(resources: Resources) -> int:
    """Rows of a read block (per-image plans) and of a decode batch: what the bar and Ctrl-C's commit move by.

    A map task hands on its rows only when it ends, so a block of several actor batches held the finished ones
    back until the last was done. On CPU actors a batch takes seconds to minutes (ViT-B-16): a block is one
    batch. On GPUs a batch takes milliseconds, and Ray Data's cost per block, the driver's included, would set
    the pace: blocks stay at `DECODE_BATCH` rows.
    """
    return min(DECODE_BATCH, resources.batch_size) if resources.device == "cpu" else DECODE_BATCH


def _user_facing(exc: BaseException, run: _Run) -> BaseException:
    """The error to raise: our own one from inside Ray's wrapper, or refused credentials said plainly."""
    cause = unwrap_task_error(exc)
    if isinstance(cause, SFPLabelError):
        return cause
    if is_access_denied(cause):
        return access_denied(run.source.uri, run.output.uri, run.redact(root_cause(cause)))
    return exc


def _record_failure(run: _Run, manifest: Manifest, exc: BaseException, writer: PartCommitter) -> None:
    """Mark the run failed in its manifest and drop what it staged; files already committed (incremental)
    are listed, they stay valid, and the card is brought up to them. Best effort: the next run clears what
    is left."""
    table = run.table.briefly()
    files = [f.name for f in writer.written] if writer.commit_each_file else []
    try:
        manifest.failed(root_cause(exc), files, time.time()).write(run.output, run.redact, table.retry)
        table.remove_staging(run.run_id)
        pointer = table.pointer_as_written()
        if writer.commit_each_file and pointer is not None:
            _write_card(run, pointer, table, writer.written)
        elif pointer is None or pointer.data != writer.folder:  # an overwrite that never flipped
            table.discard_folder(writer.folder)
    except Exception as record_exc:  # the run's own error is the one to raise
        log.warning("could not record the failed run %s: %s", run.run_id, run.redact(str(record_exc)))


@contextlib.contextmanager
def _data_context(display: RunDisplay) -> Iterator[None]:
    """Ray Data's bars and plan printout only when asked; a stage's own exception (e.g. StorageUnavailable)
    rather than Ray's wrapper."""
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    data_logger.setLevel(logging.INFO if display.verbose else logging.ERROR)
    ctx = DataContext.get_current()
    names = ("enable_progress_bars", "print_on_execution_start", "raise_original_map_exception")
    saved = [getattr(ctx, name) for name in names]
    for name, value in zip(names, (display.ray_progress, display.verbose, True), strict=True):
        setattr(ctx, name, value)
    try:
        yield
    finally:
        for name, value in zip(names, saved, strict=True):
            setattr(ctx, name, value)
        data_logger.setLevel(level)
