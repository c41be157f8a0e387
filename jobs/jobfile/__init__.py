"""Job files: the YAML schema, loading (safe YAML, `${ENV}`, `--set`, secret refusal), turning a job into a
`pipeline.LabelRequest` (`resolve`), and running it where it fits the cluster (`launch`, `placement`)."""

from .errors import JobError
from .resolve import Job, load_job

__all__ = ["Job", "JobError", "load_job"]
