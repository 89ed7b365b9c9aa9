"""What the tests share, once: the real CLI run plainly or under a real ``mpirun`` (with a
timeout), a run killed at an exact step, HDF5 files compared dataset by dataset, working folders
copied from a finished run, toy models whose answer is known, and a real Slurm's client calls.
Fixtures live in conftest.py."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Torch threads of every run the tests make (train.threads, attack.threads, OMP_NUM_THREADS, the
# in-process passes). Another count changes the kernels as another machine would:
# `make test-cpu-kinds` runs the comparing tests with 2 and ATEN_CPU_CAPABILITY=avx2.
THREADS = int(os.environ.get("HPCMORPH_TEST_THREADS", "1"))

# The tiny run the stage tests start from: 40 galaxies, both models barely trained (2 epochs), on
# THREADS threads. conftest.py makes it once per session; each test works on a copy.
TINY_GEN = ["--config", "tiny", "--set", "generate.n_galaxies=40"]
TINY_TRAIN = [*TINY_GEN, "--set", "train.epochs=2", "--set", "train.batch_size=8", "--set", "train.lr=0.001",
              "--set", f"train.threads={THREADS}"]
# Its attack: DE with a small budget on 5 images, in blocks of 2, one thread. Threshold 0: every
# targeted attack succeeds with its first candidates (a softmax is never 0), so every model has
# flipped images for the analysis, whatever the trained weights.
TINY_ATTACK = [*TINY_TRAIN, "--set", "attack.population=12", "--set", "attack.generations=6",
               "--set", "attack.n_images=5", "--set", "attack.images_per_batch=2", "--set", f"attack.threads={THREADS}",
               "--set", "attack.threshold=0"]
TINY_ANALYZE = [*TINY_ATTACK, "--set", f"analyze.threads={THREADS}", "--set", "analyze.batch_size=4"]
# The same settings as key=value overrides, and an analysis small enough for every stage in a minute.
SMALL_RUN = ["generate.n_galaxies=40", "train.epochs=2", "train.batch_size=8", "train.lr=0.001",
             f"train.threads={THREADS}", "attack.population=12", "attack.generations=6", "attack.n_images=5",
             "attack.images_per_batch=2", f"attack.threads={THREADS}", "attack.threshold=0",
             "analyze.k_sweep=[1,2]", "analyze.isomap_images=20"]


# ------------------------------------------------------------------------------- the CLI, run

def mpirun() -> str:
    found = shutil.which("mpirun") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("no mpirun on this machine")
    return found


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
              "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMP_NUM_THREADS": str(THREADS), "PYTHONUNBUFFERED": "1",
              "PYTHONPATH": str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")})
    e.update(extra)
    return e


def sets(overrides: list[str]) -> list[str]:
    """``--set`` flags for ``key=value`` overrides."""
    return [a for kv in overrides for a in ("--set", kv)]


def command(args: list[str], ranks: int = 1, python: list[str] | None = None) -> list[str]:
    """``hpcmorph ARGS`` (or ``python PYTHON... ARGS``), under ``mpirun -n RANKS`` when RANKS > 1."""
    base = [sys.executable, *(python or ["-m", "hpcmorph"]), *args]
    return base if ranks == 1 else [mpirun(), "-n", str(ranks), *base]


def cli(args: list[str], cwd: Path, ranks: int = 1, timeout: float = 300, check: bool = True):
    """Run ``hpcmorph ARGS`` (under ``mpirun -n RANKS`` when RANKS > 1); never hangs past ``timeout``."""
    res = subprocess.run(command(args, ranks), cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"hpcmorph {' '.join(args)} (ranks={ranks}) exited {res.returncode}\n"
                             f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-5000:]}")
    return res


# The real CLI with one function (``module`` ``name``, e.g. hpcmorph.store Blocks.write) wrapped to
# SIGKILL its own process when it is called for the (after + 1)-th time: a kill at exactly that step,
# on every rank, with nothing left to chance.
KILL_AT = """
import importlib, os, signal, sys
module, name, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
owner = importlib.import_module(module)
*path, attr = name.split(".")
for part in path:
    owner = getattr(owner, part)
original, calls = getattr(owner, attr), []
def killing(*args, **kwargs):
    if len(calls) == after:
        os.kill(os.getpid(), signal.SIGKILL)
    calls.append(1)
    return original(*args, **kwargs)
setattr(owner, attr, killing)
from hpcmorph.cli import main
sys.exit(main(sys.argv[4:]))
"""


def killed_at(module: str, name: str, after: int, args: list[str], cwd: Path, ranks: int = 1,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """``hpcmorph ARGS`` with every rank SIGKILLed at its (after + 1)-th call of ``module.name``
    (:data:`KILL_AT`); mpirun and all it started are gone when this returns."""
    proc = subprocess.Popen(command(args, ranks, ["-c", KILL_AT, module, name, str(after)]), cwd=cwd, env=env(),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_session(proc.pid)
    assert proc.returncode != 0, f"the run was never killed at {module}.{name}:\n{err[-3000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def blocks_on_disk(run: Path, output: str) -> int:
    """Checkpoint blocks a stopped stage left for ``output`` (e.g. attack.h5) in ``run``."""
    return len(list(run.glob(f"{output}.parts-*/block-*.h5")))


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
    try:
        os.killpg(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.time() + 30
    while (members := session_members(sid)) and time.time() < deadline:
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def serial():
    """This test process as a one-rank job (MPI's COMM_SELF): for calling a stage's ``run`` in-process."""
    from mpi4py import MPI

    from hpcmorph import mpi

    return mpi.Context(MPI.COMM_SELF)


# ----------------------------------------------------------------------------- files, folders

def datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file, read whole (for comparing outputs)."""
    with h5py.File(path, "r") as f:
        return {name: f[name][...] for name in f}


def flipped_images(attack_file: Path) -> dict[str, dict[int, bool]]:
    """{variant: {galaxy row of an attacked image: whether any of its attacks succeeded}}, read from an
    attack output directly (the reference the analysis's paired differences are checked against)."""
    with h5py.File(attack_file, "r") as f:
        names = str(f.attrs["variant_names"]).split(",")
        variant, index, success = f["variant"][...], f["index"][...], f["success"][...]
    return {v: {int(i): bool(success[(variant == k) & (index == i)].any()) for i in np.unique(index[variant == k])}
            for k, v in enumerate(names)}


def assert_same_data(a: Path, b: Path) -> None:
    """Every dataset of ``a`` and ``b`` bit for bit: for two runs that computed each number with the
    same operations on the same inputs (same batches, same kernels), whatever the ranks or restarts."""
    da, db = datasets(a), datasets(b)
    assert sorted(da) == sorted(db)
    for name in da:
        np.testing.assert_array_equal(da[name], db[name], err_msg=f"dataset {name} differs between {a} and {b}")


def workdir(tmp_path: Path, run: Path, name: str = "w") -> Path:
    """A fresh working directory whose ``runs/tiny`` is a copy of the run folder ``run``."""
    cwd = tmp_path / name
    shutil.copytree(run, cwd / "runs" / "tiny", ignore=shutil.ignore_patterns("*.lock"))
    return cwd


# -------------------------------------------------------------------------------- toy models

H = W = 12


class Bumps(torch.nn.Module):
    """A "model" that says class 1 iff band 1 is bright enough at the given spots.

    logit_1 = 20 (sum over pixels of w (x - 0.5) - need) with w a sum of narrow Gaussians
    (sigma 0.7 px) at ``spots``; logit_0 = 0, logit_2 = -10. On a flat 0.5 image p_1 is tiny; it
    passes 0.5 iff the weighted excess passes ``need``. With one spot and need 0.3, only the spot
    itself, set above 0.8, does it (a neighbour has w = 0.36: it would need 1.33, out of range).
    """

    def __init__(self, spots, need: float):
        super().__init__()
        yy, xx = np.mgrid[:H, :W]
        w = sum(np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * 0.7 ** 2)) for px, py in spots)
        self.register_buffer("w", torch.tensor(w, dtype=torch.float32))
        self.need = need

    def forward(self, x):
        l1 = 20 * (((x[:, 1] - 0.5) * self.w).sum((1, 2)) - self.need)
        zero = torch.zeros_like(l1)
        return torch.stack([zero, l1, zero - 10], 1)


def flat(n=1, noise=0.0, seed=0) -> torch.Tensor:
    """``n`` images (n, 3, H, W) at 0.5, plus Gaussian noise of that std."""
    base = torch.full((n, 3, H, W), 0.5)
    if noise:
        base += noise * torch.randn(base.shape, generator=torch.Generator().manual_seed(seed))
    return base


class Counted(torch.nn.Module):
    """The model under attack, counting what it is given: candidate images and gradient passes. A lone
    image arrives as a pair, itself twice (see ``pixels.forward_probs``), and counts once: the tests
    give every attack its own image, so two equal images in one pass are that pair. Given ``bases``
    (the attacked images), it also checks that every candidate is one of them with at most ``k``
    pixels changed, to values in [low, high]."""

    def __init__(self, model, bases=None, k=None, low=None, high=None):
        super().__init__()
        self.model, self.bases, self.k, self.low, self.high = model, bases, k, low, high
        self.images, self.gradient_images, self.calls = 0, 0, []

    def forward(self, x):
        n = 1 if x.shape[0] == 2 and torch.equal(x[0], x[1]) else x.shape[0]
        if x.requires_grad:
            self.gradient_images += n
        else:
            self.images += n
            self.calls.append(x[:n].detach().clone())
            if self.bases is not None:
                changed = (x[:n, None] != self.bases[None]).any(2)  # (N, bases, H, W)
                count, base = changed.sum((2, 3)).min(1)
                assert int(count.max()) <= self.k, "a candidate changes more than k pixels"
                moved = x[:n].permute(0, 2, 3, 1)[changed[torch.arange(n), base]]
                assert bool(((moved >= self.low) & (moved <= self.high)).all()), "a value left the box"
        return self.model(x)


# ------------------------------------------------------------------------------- a real Slurm

SLURM_LOCAL = ROOT / "scripts" / "slurm-local.sh"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}
JOB_TIMEOUT = 180


def slurm_installed() -> bool:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return all(shutil.which(p, path=path) for p in ("munged", "slurmctld", "slurmd", "sbatch"))


class Slurm:
    """A cluster started by scripts/slurm-local.sh in ``root``, reached through ``conf``."""

    def __init__(self, root: Path, conf: str):
        self.root, self.conf = root, conf

    def env(self, **extra: str) -> dict[str, str]:
        """The submitting shell: this one without any MPI or Slurm job context (the job script must
        set up what it needs itself, root's OpenMPI consent included), plus our SLURM_CONF."""
        e = {k: v for k, v in os.environ.items()
             if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "OMPI_", "PMIX_", "PRTE_"))}
        e.update({"SLURM_CONF": self.conf, "PYTHONUNBUFFERED": "1",
                  "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                  "HPCMORPH_VENV": sys.prefix})
        e.update(extra)
        return e

    def run(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env(), capture_output=True, text=True, timeout=60, **kw)

    def sbatch(self, script: Path, cwd: Path, args: list[str], **env: str) -> str:
        """Submit ``script`` from ``cwd``; returns the job id."""
        res = subprocess.run(["sbatch", "--parsable", *args, str(script)], cwd=cwd, env=self.env(**env),
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"sbatch exited {res.returncode}: {res.stderr}\n{self.logs()}"
        return res.stdout.strip().split(";")[0]

    def job(self, jobid: str) -> dict[str, str]:
        res = self.run(["scontrol", "show", "job", "-o", jobid])
        assert res.returncode == 0, f"scontrol show job {jobid}: {res.stderr}"
        return dict(re.findall(r"(\w+)=(\S*)", res.stdout))

    def wait_done(self, jobid: str, cwd: Path, timeout: float = JOB_TIMEOUT) -> dict[str, str]:
        """The job's record once it has ended; scancel and fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(jobid)
            if info["JobState"] in TERMINAL:
                return info
            time.sleep(0.5)
        self.run(["scancel", jobid])
        raise AssertionError(f"job {jobid} not finished after {timeout:.0f} s: {info}\n{job_logs(cwd)}\n"
                             f"{self.logs()}")

    def assert_completed(self, info: dict[str, str], cwd: Path) -> None:
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), \
            f"job {info['JobId']}: {info['JobState']} exit {info['ExitCode']}\n{job_logs(cwd)}\n{self.logs()}"

    def logs(self) -> str:
        out = []
        for f in ("log/slurmctld.log", "log/slurmd.log", "munge/munged.log"):
            p = self.root / f
            if p.exists():
                out.append(f"----- {p} (tail) -----\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(out)


def job_logs(cwd: Path) -> str:
    """The tails of every job log in ``cwd`` (for failure messages)."""
    return "\n".join(f"----- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(cwd.glob("*.out")))
