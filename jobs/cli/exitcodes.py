"""Exit codes of `sfp-label`, in one place so scripts, cron and Airflow can rely on them."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a finished `sfp-label` command means to the script that started it."""

    OK = 0  # every image has a mask (or there was nothing new to do)
    BAD_JOB = 2  # bad job file, bad --set, bad arguments, unreadable output: fix the input, do not retry
    PARTIAL = 3  # the run finished but some images got error rows (see `sfp-label show`)
    CRASH = 4  # the run itself failed (storage, Ray, weights, a bug): retrying may help
    BUSY = 5  # another run holds this output's lease; nothing was done
    INTERRUPTED = 130  # Ctrl-C / SIGINT
    TERMINATED = 143  # SIGTERM (Kubernetes, Airflow, `ray job stop`): 128 + 15


HELP = """exit codes:
  0    ok: every image labelled, or nothing new to label
  2    bad job file, --set value or arguments (the message names the field); do not retry
  3    partial failure: the run finished but some images got error rows
  4    crash: the run failed (storage, Ray, weights, bug); a retry may help
  5    busy: another run of this output holds its lease; nothing was done
  130  interrupted (Ctrl-C): finished files are kept, the lease released
  143  terminated (SIGTERM): the same"""
