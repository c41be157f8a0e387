"""Run a resolved job: check it fits the cluster, call `pipeline.label` (which holds the output's lease)."""

from __future__ import annotations

import logging

from pipeline import RunSummary, label

from .exitcodes import ExitCode
from .placement import check_placement, cluster_view
from .resolve import Job
from .storage import fsspec_options

log = logging.getLogger(__name__)


def run_job(job: Job, *, progress: bool = True) -> RunSummary:
    """Label the job's input into its output; raises JobError, LeaseHeld, StorageUnavailable, or what the run hit."""
    for warning in check_placement(job, cluster_view()):
        log.warning(warning)
    spec = job.spec
    return label(
        spec.input.uri,
        spec.output.uri,
        vocabulary=job.vocabulary,
        arch=spec.model.arch,
        weights=spec.model.weights,
        weights_sha256=spec.model.weights_sha256,
        weights_storage_options=fsspec_options(spec.model.weights, spec.model.storage_options),
        config=job.config,
        extensions=tuple(spec.input.extensions),
        input_storage_options=spec.input.storage_options,
        output_storage_options=spec.output.storage_options,
        mode=spec.output.mode,
        confidence=spec.output.confidence,
        actors=spec.resources.actors,
        gpus_per_actor=spec.resources.gpus_per_actor,
        batch_size=spec.resources.batch_size,
        max_pixels=spec.resources.max_pixels,
        run_name=spec.name,
        progress=progress,
    )


def exit_code(summary: RunSummary) -> ExitCode:
    """A run with error rows finished, but not fully: scripts must be able to tell."""
    return ExitCode.PARTIAL if summary.error else ExitCode.OK
