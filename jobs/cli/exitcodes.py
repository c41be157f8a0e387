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


_RUN = {
    ExitCode.OK: "ok: every image labelled, or nothing new to label",
    ExitCode.BAD_JOB: "bad job file, --set value or arguments (the message names the field); do not retry",
    ExitCode.PARTIAL: "partial failure: the run finished but some images got error rows",
    ExitCode.CRASH: "crash: the run failed (storage, Ray, weights, bug); a retry may help",
    ExitCode.BUSY: "busy: another run of this output holds its lease; nothing was done",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C): finished files are kept, the lease released",
    ExitCode.TERMINATED: "terminated (SIGTERM): the same",
}
_VALIDATE = {
    ExitCode.OK: "ok: the job and what it names (input, output, weights) would run",
    ExitCode.BAD_JOB: "bad job file, --set value or arguments, or what it names is missing or refused; do not retry",
    ExitCode.CRASH: "storage or network trouble (a retry may help), or a bug (with its traceback)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitCode.TERMINATED: "terminated (SIGTERM)",
}
_SHOW = {
    ExitCode.OK: "ok",
    ExitCode.BAD_JOB: "not an sfp-label output, or bad arguments (the message names which); do not retry",
    ExitCode.CRASH: "storage trouble (a retry may help), or a bug (with its traceback)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitCode.TERMINATED: "terminated (SIGTERM)",
}
_WRITE = _SHOW | {  # export, eval, render: they write local files too
    ExitCode.BAD_JOB: "not an sfp-label output, bad arguments, or a destination that is a file; do not retry",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C): what was written so far stays",
    ExitCode.TERMINATED: "terminated (SIGTERM): the same",
}
_COMPACT = _SHOW | {
    ExitCode.OK: "ok: compacted, or nothing to compact",
    ExitCode.BUSY: "busy: a run holds the output's lease; nothing was done",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C): the current version stands",
    ExitCode.TERMINATED: "terminated (SIGTERM): the same",
}
_UPGRADE = _COMPACT | {
    ExitCode.OK: "ok: moved into the current layout",
    ExitCode.BAD_JOB: "nothing to upgrade, a file it cannot move, or bad arguments (the message names it)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C): run it again to finish the move",
}
_BY_COMMAND = {
    "run": _RUN, "validate": _VALIDATE, "show": _SHOW, "export": _WRITE, "eval": _WRITE, "render": _WRITE,
    "compact": _COMPACT, "upgrade": _UPGRADE,
}  # fmt: skip


def exit_codes_help(command: str | None = None) -> str:
    """The exit-code table for `--help`: the codes `command` can return, in its words; the program's is
    `run`'s, which has them all."""
    meanings = _BY_COMMAND[command or "run"]
    rows = (f"  {code.value:<4} {meanings[code]}" for code in sorted(meanings))
    return "\n".join(["exit codes:", *rows])
