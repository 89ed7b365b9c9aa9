"""SIGTERM/SIGUSR1 (what Slurm sends ahead of the wall-time kill) at every phase of ``train``: the run
ends with exit 75 after a checkpoint or with nothing left to do, and the same command then finishes
with exactly the weights an uninterrupted run has. A finished run is never trained again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import TINY_TRAIN, cli, env, sets, workdir

pytestmark = pytest.mark.slow

# The session's tiny training (2 epochs), its regular model only: the uninterrupted reference is
# tiny_trained's.
ARGS = ["train", *TINY_TRAIN, *sets(["train.variants=[regular]"])]

# Run the real CLI with one function of the train stage wrapped to signal its own process as it
# starts: the signal lands exactly in that phase, as a scheduler's would at that moment.
SIGNAL_AT = """
import os, signal, sys
import hpcmorph.train.stage as stage
name = sys.argv[1]
original = getattr(stage, name)
def signalled(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGUSR1)
    return original(*args, **kwargs)
setattr(stage, name, signalled)
from hpcmorph.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _metrics(cwd):
    return json.loads((cwd / "runs" / "tiny" / "regular" / "seed0" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def reference(tiny_trained):
    return json.loads((tiny_trained / "regular" / "seed0" / "metrics.json").read_text())


@pytest.mark.parametrize("phase, says", [
    ("init_backend", "checkpoint"),          # before any training: a checkpoint at step 0
    ("end_epoch", "checkpoint"),             # validation, between epochs
    ("test", "nothing is left to do"),       # after early stopping / the last epoch: testing, outputs
    ("write_summary", "nothing is left to do"),
])
def test_signal_in_each_phase_exits_75_and_the_rerun_matches(phase, says, reference, tiny_galaxies, tmp_path):
    cwd = workdir(tmp_path, tiny_galaxies)
    res = subprocess.run([sys.executable, "-c", SIGNAL_AT, phase, *ARGS], cwd=cwd, env=env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 75, res.stderr[-3000:]
    assert says in res.stderr and "Traceback" not in res.stderr, res.stderr[-3000:]
    again = cli(ARGS, cwd)
    found = _metrics(cwd)
    assert found["weights_sha256"] == reference["weights_sha256"]
    assert found["epochs_run"] == reference["epochs_run"] and found["best_epoch"] == reference["best_epoch"]
    if says == "nothing is left to do":  # finished before the signal: the rerun trains nothing
        assert "up to date; skipping" in again.stderr and "epoch 1:" not in again.stderr
