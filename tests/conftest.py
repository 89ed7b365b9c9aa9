"""Shared helpers and fixtures: run the real CLI, plainly or under a real ``mpirun``, with a timeout;
one tiny generated and trained run per session that the stage tests copy."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def mpirun() -> str:
    found = shutil.which("mpirun") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("no mpirun on this machine")
    return found


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
              "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
              "PYTHONPATH": str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")})
    return e


# Every stage in about a minute: tests/test_attack.py's small attack (a threshold just under a barely
# trained model's probabilities, so some attacks flip at once), two pixel counts, a small isomap.
SMALL_RUN = ["generate.n_galaxies=40", "train.epochs=2", "train.batch_size=8", "train.lr=0.001", "train.threads=1",
             "attack.population=12", "attack.generations=6", "attack.n_images=5", "attack.images_per_batch=2",
             "attack.threshold=0.29", "analyze.k_sweep=[1,2]", "analyze.isomap_images=20"]


def serial():
    """This test process as a one-rank job (MPI's COMM_SELF): for calling a stage's ``run`` in-process."""
    from mpi4py import MPI

    from hpcmorph import mpi

    return mpi.Context(MPI.COMM_SELF)


def sets(overrides: list[str]) -> list[str]:
    """``--set`` flags for ``key=value`` overrides."""
    return [a for kv in overrides for a in ("--set", kv)]


def command(args: list[str], ranks: int = 1) -> list[str]:
    base = [sys.executable, "-m", "hpcmorph", *args]
    return base if ranks == 1 else [mpirun(), "-n", str(ranks), *base]


def cli(args: list[str], cwd: Path, ranks: int = 1, timeout: float = 300, check: bool = True):
    """Run ``hpcmorph ARGS`` (under ``mpirun -n RANKS`` when RANKS > 1); never hangs past ``timeout``."""
    res = subprocess.run(command(args, ranks), cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"hpcmorph {' '.join(args)} (ranks={ranks}) exited {res.returncode}\n"
                             f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-5000:]}")
    return res


def datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file, read whole (for comparing outputs)."""
    with h5py.File(path, "r") as f:
        return {name: f[name][...] for name in f}


def assert_same_data(a: Path, b: Path) -> None:
    da, db = datasets(a), datasets(b)
    assert sorted(da) == sorted(db)
    for name in da:
        np.testing.assert_array_equal(da[name], db[name], err_msg=f"dataset {name} differs between {a} and {b}")


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (/proc/PID/stat: state, ppid, pgrp, session, ...)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry))
    return found


def kill_session(sid: int) -> None:
    """SIGKILL mpirun and every rank it started. Open MPI puts the ranks in process groups of their
    own, so killing mpirun's group leaves them running until they notice; they stay in the session
    the test started, though."""
    os.killpg(sid, signal.SIGKILL)
    deadline = time.time() + 30
    while (members := session_members(sid)) and time.time() < deadline:
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


# The tiny run the attack, analyze and train tests start from: 40 galaxies, both models barely
# trained (2 epochs), one thread. Made once per session; each test works on a copy.
TINY_GEN = ["--config", "tiny", "--set", "generate.n_galaxies=40"]
TINY_TRAIN = [*TINY_GEN, "--set", "train.epochs=2", "--set", "train.batch_size=8", "--set", "train.lr=0.001",
              "--set", "train.threads=1"]


@pytest.fixture(scope="session")
def tiny_galaxies(tmp_path_factory) -> Path:
    """``runs/tiny`` holding ``galaxies.h5`` of the tiny run."""
    cwd = tmp_path_factory.mktemp("tiny-galaxies")
    cli(["generate", *TINY_GEN], cwd)
    return cwd / "runs" / "tiny"


@pytest.fixture(scope="session")
def tiny_trained(tiny_galaxies, tmp_path_factory) -> Path:
    """``runs/tiny`` holding the tiny run's data and both trained models."""
    cwd = workdir(tmp_path_factory.mktemp("tiny-trained"), tiny_galaxies, "")
    cli(["train", *TINY_TRAIN], cwd)
    return cwd / "runs" / "tiny"


def workdir(tmp_path: Path, run: Path, name: str = "w") -> Path:
    """A fresh working directory whose ``runs/tiny`` is a copy of the run folder ``run``."""
    cwd = tmp_path / name
    shutil.copytree(run, cwd / "runs" / "tiny", ignore=shutil.ignore_patterns("*.lock"))
    return cwd


@pytest.fixture(scope="module")
def one_thread():
    """In-process forward passes on one thread: with two threads on a busy two-core machine every
    layer waits for a descheduled OpenMP worker (0.8 s per tiny forward pass instead of 10 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
