"""The driver does not load the model's libraries: loading a job, `validate --offline` and importing the run
module leave torch and open_clip to the actors (docs/design.md, "Layers")."""

from __future__ import annotations

import subprocess
import sys

from helpers import ROOT

HEAVY = ("torch", "open_clip")

VALIDATE_OFFLINE = """
import sys
from jobs.cli import main
code = main(["validate", "--offline", "jobs/voc21.yaml"])
print("loaded:", [name for name in {heavy} if name in sys.modules])
sys.exit(code)
"""

LOAD_AND_PREPARE_A_RUN = """
import sys
from jobs.jobfile import load_job
import pipeline.labelling  # what `run` executes in the driver, SFPPredictor's module included
load_job("jobs/ade20k.yaml").request()  # the architecture's depth checks the SFP block indices
print("loaded:", [name for name in {heavy} if name in sys.modules])
"""


def _loaded(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code.format(heavy=HEAVY)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_validate_offline_loads_neither_torch_nor_open_clip():
    assert "loaded: []" in _loaded(VALIDATE_OFFLINE)


def test_loading_a_job_and_the_run_module_loads_neither():
    assert "loaded: []" in _loaded(LOAD_AND_PREPARE_A_RUN)
