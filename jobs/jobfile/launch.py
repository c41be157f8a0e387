"""Run a resolved job: check it fits the cluster, then `pipeline.label` (which holds the output's lease)."""

from __future__ import annotations

import logging

from pipeline import RunSummary, label

from .placement import check_placement, cluster_view
from .resolve import Job

log = logging.getLogger(__name__)


def run_job(job: Job, *, progress: bool = True) -> RunSummary:
    """Label the job's input into its output; raises JobError or what the run hit (see pipeline.label)."""
    for warning in check_placement(job, cluster_view()):
        log.warning(warning)
    return label(job.request(progress=progress))
