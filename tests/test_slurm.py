"""Stage 1 through a real Slurm: scripts/slurm-local.sh brings up a one-node cluster on localhost
(conftest.py's session fixture ``slurm``) and jobs/slurm/generate.sbatch runs ``generate`` in it on 2
MPI ranks: plainly, requeued mid-run, and stopped by its real wall time."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import ROOT, SLURM_LOCAL, assert_same_data, cli
from hpcmorph import config
from hpcmorph.generate import stage as generate_stage
from hpcmorph.generate.sources import open_source

pytestmark = pytest.mark.slurm

SBATCH = ROOT / "jobs" / "slurm" / "generate.sbatch"


def job_log(cwd: Path, jobid: str) -> str:
    p = cwd / f"hpcmorph-generate-{jobid}.out"
    return p.read_text(errors="replace") if p.exists() else f"(no {p.name})"


@pytest.mark.slow
def test_start_again_and_status_find_the_running_cluster(slurm):
    before = (slurm.root / "run" / "slurmctld.pid").read_text()
    res = subprocess.run(["bash", str(SLURM_LOCAL), "start", str(slurm.root)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "already running" in res.stderr, res.stderr
    assert res.stdout.strip() == f"export SLURM_CONF={slurm.conf}"
    assert (slurm.root / "run" / "slurmctld.pid").read_text() == before
    res = subprocess.run(["bash", str(SLURM_LOCAL), "status", str(slurm.root)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "node localhost: idle" in res.stderr, res.stderr
    res = slurm.run(["sinfo", "-h", "-N", "-o", "%N %c %T"])
    assert res.stdout.split()[:2] == ["localhost", str(len(os.sched_getaffinity(0)))], res.stdout


@pytest.mark.slow
def test_generate_job_on_two_ranks_matches_a_plain_run(slurm, tmp_path, tiny_galaxies):
    # The session's tiny data, made by one plain rank, is the reference.
    jobid = slurm.sbatch(SBATCH, tmp_path, ["--ntasks=2"], HPCMORPH_CONFIG="tiny",
                         HPCMORPH_SET="generate.n_galaxies=40")
    info = slurm.wait_done(jobid, tmp_path)
    slurm.assert_completed(info, tmp_path)
    assert info["NumTasks"] == "2" and info["JobName"] == "hpcmorph-generate"
    out = tmp_path / "runs" / "tiny" / "galaxies.h5"
    assert out.exists(), job_log(tmp_path, jobid)
    with h5py.File(out, "r") as f:
        assert f.attrs["ranks"] == 2
    assert_same_data(tiny_galaxies / "galaxies.h5", out)


@pytest.mark.slow
def test_job_requeued_mid_run_resumes_to_the_same_file(slurm, tmp_path):
    # One galaxy per block: a few seconds of blocks on 2 ranks, so the signal lands mid-run.
    sets = ["generate.block_size=1", "generate.n_galaxies=240"]
    jobid = slurm.sbatch(SBATCH, tmp_path, ["--ntasks=2"], HPCMORPH_CONFIG="tiny", HPCMORPH_SET=" ".join(sets))
    parts = tmp_path / "runs" / "tiny"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts.glob("galaxies.h5.parts-*/block-*.h5"))) < 4:
        assert slurm.job(jobid)["JobState"] in {"PENDING", "CONFIGURING", "RUNNING"}, job_log(tmp_path, jobid)
        time.sleep(0.05)
    # What --signal=B:USR1@120 delivers near the time limit (or a site before preemption): the
    # script requeues its own job.
    res = slurm.run(["scancel", "--signal=USR1", "--batch", jobid])
    assert res.returncode == 0, res.stderr
    # While the requeued job waits to start again, the uninterrupted single-rank reference.
    ref = tmp_path / "reference"
    ref.mkdir()
    cli(["generate", "--config", "tiny", *[a for s in sets for a in ("--set", s)]], ref)
    info = slurm.wait_done(jobid, tmp_path)
    slurm.assert_completed(info, tmp_path)
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
# ~3 min quiet; each requeue restarts the work, so a loaded machine (each rank slower, more restarts)
# needed over 10 min once (three other test runs beside it).
@pytest.mark.timeout(900)
def test_job_at_its_wall_time_requeues_itself_and_finishes_the_same_file(slurm, tmp_path):
    """A real wall time, no signal sent by hand: a one-minute limit, Slurm's own USR1 45 s before it
    (slurmctld checks limits every 30 s, so it lands up to 45 s in), the script requeues the job,
    and the reruns resume until the file is complete, with every block as an uninterrupted run draws
    it. (The whole file against an uninterrupted run after a USR1 requeue: the test above; here the
    blocks on both sides of every restart, and some at random, against fresh draws.)"""
    # ~50 s of work on 2 quiet ranks: longer than the 45 s by which the first signal has come.
    sets = ["generate.block_size=4", "generate.n_galaxies=3200", "generate.figures=false", "generate.keep_parts=true"]
    jobid = slurm.sbatch(SBATCH, tmp_path, ["--ntasks=2", "--time=1", "--signal=B:USR1@45"], HPCMORPH_CONFIG="tiny",
                         HPCMORPH_SET=" ".join(sets))
    info = slurm.wait_done(jobid, tmp_path, timeout=840)
    slurm.assert_completed(info, tmp_path)
    log = job_log(tmp_path, jobid)
    assert int(info["Restarts"]) >= 1 and "requeueing job" in log, f"the job was never stopped by its limit\n{log}"
    # Restarts signalled before the stage got going log nothing; the others resume from the blocks.
    resumed = [int(n) for n in re.findall(r"(\d+) already on disk", log)]
    # (a run stopped after its last block but before the join resumes with all 800 on disk)
    assert resumed[0] == 0 and resumed == sorted(resumed) and 0 < resumed[-1] <= 800, log

    run = tmp_path / "runs" / "tiny"
    with h5py.File(run / "galaxies.h5", "r") as f:
        assert f.attrs["n_parents"] == 3200
    blocks = sorted(run.glob("galaxies.h5.parts-*/block-*.h5"), key=lambda p: p.stat().st_mtime_ns)
    assert len(blocks) == 800
    written = np.array([p.stat().st_mtime for p in blocks])
    restarts = np.flatnonzero(np.diff(written) > 2.0) + 1  # the first block of each later run
    picked = {0, len(blocks) - 1, *restarts, *(restarts - 1), *np.random.default_rng(0).choice(len(blocks), 6)}
    cfg = config.load("tiny", [*sets, f"run.root={tmp_path / 'runs'}"])
    source = open_source(cfg)
    label_band = cfg.generate.bands.index(cfg.generate.label_band)
    for i in sorted(picked):
        b = int(blocks[i].stem.split("-")[1])
        fresh = generate_stage._draw_block(source, generate_stage._block_rows(cfg.generate, len(source), b),
                                           label_band)
        with h5py.File(blocks[i], "r") as f:
            for name, value in fresh.items():
                np.testing.assert_array_equal(f[name][...], value, err_msg=f"{blocks[i].name}: {name}")


@pytest.mark.slow
def test_srun_pmix_launcher_gives_two_ranks(slurm, tmp_path):
    jobid = slurm.sbatch(SBATCH, tmp_path, ["--ntasks=2"], HPCMORPH_CONFIG="tiny",
                   HPCMORPH_SET="generate.n_galaxies=8", HPCMORPH_LAUNCHER="srun --mpi=pmix")
    info = slurm.wait_done(jobid, tmp_path)
    slurm.assert_completed(info, tmp_path)
    with h5py.File(tmp_path / "runs" / "tiny" / "galaxies.h5", "r") as f:
        assert f.attrs["ranks"] == 2 and f.attrs["n_parents"] == 8
