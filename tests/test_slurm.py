"""Stage 1 through a real Slurm: scripts/slurm-local.sh brings up a one-node cluster on localhost
and jobs/slurm/generate.sbatch runs ``generate`` in it on 2 MPI ranks: plainly, requeued mid-run, and
stopped by its real wall time."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import pytest

from conftest import ROOT, assert_same_data, cli

pytestmark = pytest.mark.slurm

SCRIPT = ROOT / "scripts" / "slurm-local.sh"
SBATCH = ROOT / "jobs" / "slurm" / "generate.sbatch"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}
JOB_TIMEOUT = 180


def _installed() -> bool:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return all(shutil.which(p, path=path) for p in ("munged", "slurmctld", "slurmd", "sbatch"))


class Slurm:
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

    def logs(self) -> str:
        out = []
        for f in ("log/slurmctld.log", "log/slurmd.log", "munge/munged.log"):
            p = self.root / f
            if p.exists():
                out.append(f"----- {p} (tail) -----\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(out)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0 and not _installed():
        pytest.skip("Slurm and munge are not installed and only root can install them "
                    "(as root, scripts/slurm-local.sh runs apt-get install slurm-wlm munge)")
    root = tmp_path_factory.mktemp("slurm")
    # Unix sockets (munge's, slurmstepd's) live under it and their paths may not exceed 107 bytes.
    own = len(str(root)) > 48
    if own:
        root = Path(tempfile.mkdtemp(prefix="hpcmorph-slurm-"))
    # The first start on a fresh machine installs the packages with apt: minutes, not seconds.
    res = subprocess.run(["bash", str(SCRIPT), "start", str(root)], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop", str(root)], capture_output=True, timeout=120)
        pytest.fail(f"slurm-local.sh start exited {res.returncode}\n{res.stdout}\n{res.stderr}")
    m = re.search(r"^export SLURM_CONF=(\S+)$", res.stdout, re.M)
    assert m, f"no export line in start's output:\n{res.stdout}\n{res.stderr}"
    cluster = Slurm(root, m.group(1))
    yield cluster
    res = subprocess.run(["bash", str(SCRIPT), "stop", str(root)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    if own:
        shutil.rmtree(root, ignore_errors=True)


def sbatch(slurm: Slurm, cwd: Path, args: list[str], **env: str) -> str:
    res = subprocess.run(["sbatch", "--parsable", *args, str(SBATCH)], cwd=cwd, env=slurm.env(**env),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"sbatch exited {res.returncode}: {res.stderr}\n{slurm.logs()}"
    return res.stdout.strip().split(";")[0]


def job(slurm: Slurm, jobid: str) -> dict[str, str]:
    res = slurm.run(["scontrol", "show", "job", "-o", jobid])
    assert res.returncode == 0, f"scontrol show job {jobid}: {res.stderr}"
    return dict(re.findall(r"(\w+)=(\S*)", res.stdout))


def wait_done(slurm: Slurm, jobid: str, cwd: Path, timeout: float = JOB_TIMEOUT) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job(slurm, jobid)
        if info["JobState"] in TERMINAL:
            return info
        time.sleep(0.5)
    slurm.run(["scancel", jobid])
    raise AssertionError(f"job {jobid} not finished after {timeout:.0f} s: {info}\n{job_logs(cwd)}\n{slurm.logs()}")


def job_log(cwd: Path, jobid: str) -> str:
    p = cwd / f"hpcmorph-generate-{jobid}.out"
    return p.read_text(errors="replace") if p.exists() else f"(no {p.name})"


def job_logs(cwd: Path) -> str:
    """The tails of every job log in ``cwd`` (for failure messages)."""
    return "\n".join(f"----- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(cwd.glob("*.out")))


def assert_completed(slurm: Slurm, info: dict[str, str], cwd: Path) -> None:
    jobid = info["JobId"]
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), \
        f"job {jobid}: {info['JobState']} exit {info['ExitCode']}\n{job_log(cwd, jobid)}\n{slurm.logs()}"


@pytest.mark.slow
def test_start_again_and_status_find_the_running_cluster(slurm):
    before = (slurm.root / "run" / "slurmctld.pid").read_text()
    res = subprocess.run(["bash", str(SCRIPT), "start", str(slurm.root)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "already running" in res.stderr, res.stderr
    assert res.stdout.strip() == f"export SLURM_CONF={slurm.conf}"
    assert (slurm.root / "run" / "slurmctld.pid").read_text() == before
    res = subprocess.run(["bash", str(SCRIPT), "status", str(slurm.root)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "node localhost: idle" in res.stderr, res.stderr
    res = slurm.run(["sinfo", "-h", "-N", "-o", "%N %c %T"])
    assert res.stdout.split()[:2] == ["localhost", str(len(os.sched_getaffinity(0)))], res.stdout


@pytest.mark.slow
def test_generate_job_on_two_ranks_matches_a_plain_run(slurm, tmp_path):
    jobid = sbatch(slurm, tmp_path, ["--ntasks=2"], HPCMORPH_CONFIG="tiny")
    # The single-rank reference runs while the job does.
    ref = tmp_path / "reference"
    ref.mkdir()
    cli(["generate", "--config", "tiny"], ref)
    info = wait_done(slurm, jobid, tmp_path)
    assert_completed(slurm, info, tmp_path)
    assert info["NumTasks"] == "2" and info["JobName"] == "hpcmorph-generate"
    out = tmp_path / "runs" / "tiny" / "galaxies.h5"
    assert out.exists(), job_log(tmp_path, jobid)
    with h5py.File(out, "r") as f:
        assert f.attrs["ranks"] == 2
    assert_same_data(ref / "runs" / "tiny" / "galaxies.h5", out)


@pytest.mark.slow
def test_job_requeued_mid_run_resumes_to_the_same_file(slurm, tmp_path):
    # One galaxy per block: a few seconds of blocks on 2 ranks, so the signal lands mid-run.
    sets = ["generate.block_size=1", "generate.n_galaxies=240"]
    jobid = sbatch(slurm, tmp_path, ["--ntasks=2"], HPCMORPH_CONFIG="tiny", HPCMORPH_SET=" ".join(sets))
    parts = tmp_path / "runs" / "tiny"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts.glob("galaxies.h5.parts-*/block-*.h5"))) < 4:
        assert job(slurm, jobid)["JobState"] in {"PENDING", "CONFIGURING", "RUNNING"}, job_log(tmp_path, jobid)
        time.sleep(0.05)
    # What --signal=B:USR1@120 delivers near the time limit (or a site before preemption): the
    # script requeues its own job.
    res = slurm.run(["scancel", "--signal=USR1", "--batch", jobid])
    assert res.returncode == 0, res.stderr
    # While the requeued job waits to start again, the uninterrupted single-rank reference.
    ref = tmp_path / "reference"
    ref.mkdir()
    cli(["generate", "--config", "tiny", *[a for s in sets for a in ("--set", s)]], ref)
    info = wait_done(slurm, jobid, tmp_path)
    assert_completed(slurm, info, tmp_path)
    log = job_log(tmp_path, jobid)
    assert int(info["Restarts"]) == 1, log
    assert "requeueing job" in log and "(restart 1)" in log, log
    resumed = [int(n) for n in re.findall(r"(\d+) already on disk", log)]
    assert len(resumed) == 2 and resumed[0] == 0 and 4 <= resumed[1] < 240, \
        f"the second run should resume from the first one's blocks: {resumed}\n{log}"
    out = parts / "galaxies.h5"
    with h5py.File(out, "r") as f:
        assert f.attrs["ranks"] == 2
    assert_same_data(ref / "runs" / "tiny" / "galaxies.h5", out)
    assert not list(parts.glob("galaxies.h5.parts-*")), "checkpoint blocks not cleaned up"


@pytest.mark.slow
def test_job_at_its_wall_time_requeues_itself_and_finishes_the_same_file(slurm, tmp_path):
    """A real wall time, no signal sent by hand: a one-minute limit, Slurm's own USR1 45 s before it
    (slurmctld checks limits every 30 s, so it lands up to 45 s in), the script requeues the job,
    and the reruns resume until the file is complete: the same file as an uninterrupted run."""
    # ~50 s of work on 2 quiet ranks: longer than the 45 s by which the first signal has come.
    sets = ["generate.block_size=4", "generate.n_galaxies=3200", "generate.figures=false"]
    jobid = sbatch(slurm, tmp_path, ["--ntasks=2", "--time=1", "--signal=B:USR1@45"], HPCMORPH_CONFIG="tiny",
                   HPCMORPH_SET=" ".join(sets))
    info = wait_done(slurm, jobid, tmp_path, timeout=600)
    assert_completed(slurm, info, tmp_path)
    log = job_log(tmp_path, jobid)
    assert int(info["Restarts"]) >= 1 and "requeueing job" in log, f"the job was never stopped by its limit\n{log}"
    # Restarts signalled before the stage got going log nothing; the others resume from the blocks.
    resumed = [int(n) for n in re.findall(r"(\d+) already on disk", log)]
    # (a run stopped after its last block but before the join resumes with all 800 on disk)
    assert resumed[0] == 0 and resumed == sorted(resumed) and 0 < resumed[-1] <= 800, log
    # The uninterrupted reference afterwards, so that it does not slow the job (2 ranks: generate's
    # output does not depend on the rank count, tested elsewhere).
    ref = tmp_path / "reference"
    ref.mkdir()
    cli(["generate", "--config", "tiny", *[a for s in sets for a in ("--set", s)]], ref, ranks=2, timeout=600)
    assert_same_data(ref / "runs" / "tiny" / "galaxies.h5", tmp_path / "runs" / "tiny" / "galaxies.h5")


@pytest.mark.slow
def test_srun_pmix_launcher_gives_two_ranks(slurm, tmp_path):
    jobid = sbatch(slurm, tmp_path, ["--ntasks=2"], HPCMORPH_CONFIG="tiny",
                   HPCMORPH_SET="generate.n_galaxies=8", HPCMORPH_LAUNCHER="srun --mpi=pmix")
    info = wait_done(slurm, jobid, tmp_path)
    assert_completed(slurm, info, tmp_path)
    with h5py.File(tmp_path / "runs" / "tiny" / "galaxies.h5", "r") as f:
        assert f.attrs["ranks"] == 2 and f.attrs["n_parents"] == 8
