"""The filter that keeps Ray's C++ core log lines off the terminal (`jobs/cli/quiet.py`): what it drops,
what it passes at once (a progress bar redraws without a newline), and fd 2 put back afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from jobs.cli.quiet import _LineFilter

RAY_LINE = (
    b"[2026-12-07 17:39:26,953 E 24579 24579] core_worker.cc:2465: Actor with class name: "
    b"'MapWorker(MapBatches(SFPPredictor))' has constructor arguments in the object store and max_restarts > 0.\n"
)


def filtered(chunks: list[bytes]) -> tuple[bytes, list[bytes]]:
    """Everything written, and what had been written after each chunk."""
    read_end, write_end = os.pipe()
    line_filter = _LineFilter(write_end)
    seen = []
    for chunk in chunks:
        line_filter.feed(chunk)
        seen.append(_drain(read_end))
    line_filter.close()
    os.close(write_end)
    rest = _drain(read_end)
    os.close(read_end)
    return b"".join(seen) + rest, seen


def _drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


@pytest.mark.parametrize("cut", [1, 5, 30, 70, len(RAY_LINE) - 1])
def test_ray_core_lines_are_dropped_however_they_arrive(cut):
    text = b"before\n" + RAY_LINE + b"after\n"
    position = len(b"before\n") + cut
    everything, _ = filtered([text[:position], text[position:]])
    assert everything == b"before\nafter\n"


@pytest.mark.parametrize("cut", [0, 3, 40, len(RAY_LINE) - 1])
def test_a_ray_line_written_right_after_a_bar_is_dropped_and_the_bar_kept(cut):
    """Ray writes where the cursor is: after a bar drawn without a newline, its line starts mid-line."""
    bar = b"\r  3/10 images [###   ]"
    text = bar + RAY_LINE + b"\r  4/10 images [####  ]"
    everything, seen = filtered([text[: len(bar) + cut], text[len(bar) + cut :]])
    assert everything == bar + b"\r  4/10 images [####  ]"
    assert seen[0].startswith(b"\r  3/10 images ")  # the bar is not held back behind the Ray line


def test_a_progress_bar_passes_at_once_and_other_lines_whole():
    everything, seen = filtered([b"\r  3/10 images", b"\r  4/10 images", b"\n[note] not a Ray line\n"])
    assert seen[0] == b"\r  3/10 images" and seen[1] == b"\r  4/10 images"  # not held for a newline
    assert everything.endswith(b"[note] not a Ray line\n")
    fatal = b"[2026-12-07 17:39:26,953 F 1 1] logging.cc:1: Check failed\n"
    assert filtered([fatal])[0] == fatal  # the process dies right after: the user must see it
    date_like = b"[2026-12-07 10:00] my own log line\n"
    assert filtered([date_like])[0] == date_like


def test_stderr_is_filtered_inside_and_restored_after(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, sys
        from jobs.cli.quiet import without_ray_core_lines
        with without_ray_core_lines():
            os.write(2, {RAY_LINE!r})
            print("kept", file=sys.stderr)
        os.write(2, {RAY_LINE!r})
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"kept\n" + RAY_LINE  # after the block, fd 2 is the terminal again
