"""Check a resolved job (preflight: nothing starts) and run it where it fits the cluster (`pipeline.label`)."""

from __future__ import annotations

import logging

from pipeline import RunDisplay, RunSummary, label, preflight

from .placement import check_placement, check_submitted_output, cluster_view
from .resolve import Job

log = logging.getLogger(__name__)


def check_job(job: Job, *, offline: bool = False) -> None:
    """Everything knowable before the run starts (see `pipeline.preflight`); raises a UserError."""
    check_submitted_output(job)
    preflight(job.request(), offline=offline)


def run_job(job: Job, display: RunDisplay | None = None) -> RunSummary:
    """Label the job's input into its output; raises JobError or what the run hit (see pipeline.label).

    `label` runs the preflight itself, once; the job's own checks come first."""
    check_submitted_output(job)
    for warning in check_placement(job, cluster_view(display.verbose if display else False)):
        log.warning(warning)
    return label(job.request(), display)
