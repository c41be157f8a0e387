"""What `sfp-label` says matches what it does: the last progress line of a shard run, and each subcommand's
exit-code table in its `--help` (in-process: no model, no Ray)."""

from __future__ import annotations

import io
import re

import pytest

from jobs.cli import main
from jobs.cli.progress import ProgressDisplay
from pipeline import Progress


def shards(done: int, units_done: int) -> Progress:
    return Progress(done=done, ok=done, error=0, total=None, skipped=0, elapsed_s=10.0, units_done=units_done,
                    units_total=2, unit_name="shards")  # fmt: skip


def test_the_last_progress_line_of_a_shard_run_counts_every_shard_read():
    """The final tally (2/2) lands right after the last rows (0/2): the throttle held it back, close shows it."""
    stream = io.StringIO()
    display = ProgressDisplay(stream, line_every_s=30)
    display(shards(done=2, units_done=0))
    display(shards(done=4, units_done=0))
    display(shards(done=4, units_done=2))
    display.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("progress: 2 images") and "0/2 shards read" in lines[0]
    assert lines[-1].startswith("progress: 4 images") and "2/2 shards read" in lines[-1]
    assert len(lines) == 2


EXPECTED_CODES = {
    "run": {0, 2, 3, 4, 5, 130, 143},
    "validate": {0, 2, 4, 130, 143},
    "show": {0, 2, 4, 130, 143},
    "export": {0, 2, 4, 130, 143},
    "eval": {0, 2, 4, 130, 143},
    "render": {0, 2, 4, 130, 143},
    "upgrade": {0, 2, 4, 5, 130, 143},
    "compact": {0, 2, 4, 5, 130, 143},
}


def test_each_subcommand_states_its_own_exit_codes(capsys):
    """Not `run`'s table everywhere: `show` never exits 3 or 5, `compact` can be busy (5)."""
    for command, codes in EXPECTED_CODES.items():
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        table = capsys.readouterr().out.split("exit codes:\n", 1)[1]
        listed = {int(number) for number in re.findall(r"^  (\d+) ", table, flags=re.MULTILINE)}
        assert listed == codes, command
