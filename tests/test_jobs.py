"""Batch job scripts (jobs/slurm/*.sbatch, jobs/pbs/*.pbs) and ``hpcmorph submit``.

No PBS server is packaged for Debian: the PBS scripts' directives are checked statically and their
bodies run here with the variables PBS sets (PBS_O_WORKDIR, PBS_NODEFILE, PBS_JOBID), through an
``mpiexec`` that takes PALS/MPICH's ``-n N --ppn P`` and starts the ranks with OpenMPI. The Slurm
chain runs on the real single-node Slurm of tests/test_slurm.py."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from conftest import ROOT, assert_same_data, cli, env
from test_slurm import TERMINAL, Slurm, slurm  # noqa: F401 - slurm is the module-scoped cluster fixture

SLURM_DIR = ROOT / "jobs" / "slurm"
PBS_DIR = ROOT / "jobs" / "pbs"
SLURM_SCRIPTS = sorted(SLURM_DIR.glob("*.sbatch"))
PBS_SCRIPTS = sorted(PBS_DIR.glob("*.pbs"))
QUICK = ["train.epochs=1", "train.batch_size=8", "generate.n_galaxies=24", "train.variants=[regular]"]


def directives(path: Path, prefix: str) -> list[str]:
    return [line[len(prefix):].strip() for line in path.read_text().splitlines() if line.startswith(prefix)]


# --- static checks -----------------------------------------------------------------------------

def test_every_stage_has_a_script_for_both_schedulers():
    assert {p.stem for p in SLURM_SCRIPTS} >= {"generate", "train", "attack"}
    assert {p.stem for p in PBS_SCRIPTS} == {"generate", "train", "attack"}


@pytest.mark.parametrize("path", SLURM_SCRIPTS + PBS_SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(path):
    res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("path", SLURM_SCRIPTS, ids=lambda p: p.name)
def test_slurm_directives(path):
    d = directives(path, "#SBATCH")
    assert "--signal=B:USR1@120" in d and "--requeue" in d, d
    assert f"--job-name=hpcmorph-{path.stem}" in d
    assert any(x.startswith("--time=") for x in d) and "--open-mode=append" in d
    text = path.read_text()
    assert "trap " in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    for var in ("HPCMORPH_CONFIG", "HPCMORPH_SET", "HPCMORPH_VENV", "HPCMORPH_IMAGE", "HPCMORPH_LAUNCHER"):
        assert var in text, f"{path.name} ignores {var}"
    if path.stem == "train":
        assert "--gpus-per-task=1" in d
        assert 'kill -USR1 "$pid"' in text and "-eq $preempted" in text


@pytest.mark.parametrize("path", PBS_SCRIPTS, ids=lambda p: p.name)
def test_pbs_directives(path):
    d = directives(path, "#PBS")
    assert f"-N hpcmorph-{path.stem}" in d
    assert any(re.fullmatch(r"-l select=\d+:system=polaris", x) for x in d), d
    assert "-l place=scatter" in d and "-l filesystems=home:eagle" in d and "-r y" in d
    assert any(re.fullmatch(r"-l walltime=\d\d:\d\d:\d\d", x) for x in d), d
    assert any(re.fullmatch(r"-A \S+", x) for x in d) and any(re.fullmatch(r"-q \S+", x) for x in d), d
    # Directives must all precede the first command, or PBS stops reading them.
    lines = path.read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("#PBS"))
    assert all(not line.strip() or line.startswith("#") for line in lines[1:last]), path
    text = path.read_text()
    assert 'cd "${PBS_O_WORKDIR:?}"' in text and '$(wc -l <"${PBS_NODEFILE:?}")' in text
    assert "mpiexec -n $ranks --ppn $ppn" in text


# --- PBS bodies, run here ----------------------------------------------------------------------

MPIEXEC = """#!/usr/bin/env bash
# mpiexec as PALS / MPICH's hydra take it (-n N --ppn P), for OpenMPI: records its arguments.
echo "$*" >>"$MPIEXEC_LOG"
while (($#)); do
    case $1 in
        -n) n=$2; shift 2 ;;
        --ppn) ppn=$2; shift 2 ;;
        *) break ;;
    esac
done
exec mpirun -n "$n" --map-by "ppr:$ppn:node" "$@"
"""


def run_pbs(stage: str, cwd: Path, tmp_path: Path, sets: list[str], timeout: float = 240):
    """Run jobs/pbs/STAGE.pbs as PBS would on one node (PBS_NODEFILE lists localhost once), 2 ranks."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "mpiexec"
    shim.write_text(MPIEXEC)
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("localhost\n")
    e = {k: v for k, v in env().items() if not k.startswith(("SLURM_", "PBS_", "OMPI_COMM_", "PMIX_"))}
    e.update({"PATH": f"{bindir}{os.pathsep}{e['PATH']}", "MPIEXEC_LOG": str(tmp_path / "mpiexec.log"),
              "PBS_O_WORKDIR": str(cwd), "PBS_NODEFILE": str(nodefile), "PBS_JOBID": f"{stage}.1234.pbs01",
              "HPCMORPH_RANKS_PER_NODE": "2", "HPCMORPH_CONFIG": "tiny", "HPCMORPH_SET": " ".join(sets),
              "HPCMORPH_VENV": sys.prefix})
    # Started from elsewhere: the script must go to PBS_O_WORKDIR itself.
    res = subprocess.run(["bash", str(PBS_DIR / f"{stage}.pbs")], cwd=tmp_path, env=e, capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, f"{stage}.pbs exited {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    launched = (tmp_path / "mpiexec.log").read_text().splitlines()[-1]
    assert launched.startswith(f"-n 2 --ppn 2 {sys.prefix}/bin/hpcmorph {stage} --config tiny") or \
        launched.startswith(f"-n 2 --ppn 2 hpcmorph {stage} --config tiny"), launched
    return res


@pytest.mark.mpi
def test_pbs_generate_and_train_bodies_run_on_two_ranks(tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    res = run_pbs("generate", cwd, tmp_path, QUICK)
    assert "job generate.1234.pbs01 on 1 node(s), 2 ranks" in res.stderr
    out = cwd / "runs" / "tiny" / "galaxies.h5"
    with h5py.File(out, "r") as f:
        assert f.attrs["ranks"] == 2
    ref = tmp_path / "reference"
    ref.mkdir()
    cli(["generate", "--config", "tiny", *[a for s in QUICK for a in ("--set", s)]], ref)
    assert_same_data(ref / "runs" / "tiny" / "galaxies.h5", out)

    run_pbs("train", cwd, tmp_path, QUICK)
    seed = cwd / "runs" / "tiny" / "regular" / "seed0"
    assert (seed / "model.pt").exists() and (seed / "metrics.json").exists()
    assert (cwd / "runs" / "tiny" / "train_summary.json").exists()


def test_pbs_script_refuses_to_run_outside_a_job(tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("PBS_")}
    res = subprocess.run(["bash", str(PBS_DIR / "generate.pbs")], cwd=tmp_path, env=e, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode != 0 and "run this script with qsub" in res.stderr


# --- hpcmorph submit ---------------------------------------------------------------------------

def submit(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None, timeout: float = 60):
    e = env()
    e.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "hpcmorph", "submit", *args], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout)


def test_submit_dry_run_pbs(tmp_path):
    res = submit(["--scheduler", "pbs", "--config", "tiny", "--set", "train.epochs=1", "--set",
                  "generate.split=[0.7,0.2,0.1]", "--account", "proj", "--queue", "prod", "--nodes", "4",
                  "--stages", "generate", "train", "attack", "--dry-run"], tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0::2] == [f"# {s}: {PBS_DIR / (s + '.pbs')}" for s in ("generate", "train", "attack")]
    cmds = lines[1::2]
    for cmd in cmds:
        assert cmd.startswith("HPCMORPH_CONFIG=tiny HPCMORPH_SET='train.epochs=1 generate.split=[0.7,0.2,0.1]' "
                              "qsub -v HPCMORPH_CONFIG,HPCMORPH_SET -A proj -q prod -l select=4:system=polaris"), cmd
    assert "depend=" not in cmds[0]
    assert "-W 'depend=afterok:<job id of generate>'" in cmds[1]
    assert "-W 'depend=afterok:<job id of train>'" in cmds[2]


def test_submit_dry_run_slurm(tmp_path):
    res = submit(["--scheduler", "slurm", "--config", "tiny", "--stages", "generate", "train", "attack",
                  "--venv", sys.prefix, "--gpus-per-task", "0", "--dry-run"], tmp_path)
    assert res.returncode == 0, res.stderr
    cmds = res.stdout.splitlines()[1::2]
    assert all(f"HPCMORPH_VENV={sys.prefix} sbatch --parsable --export=ALL,HPCMORPH_CONFIG,HPCMORPH_VENV" in c
               for c in cmds), cmds
    assert "--dependency" not in cmds[0] and "--gpus-per-task" not in cmds[0]
    assert "'--dependency=afterok:<job id of generate>' --kill-on-invalid-dep=yes" in cmds[1]
    assert "--gpus-per-task=0" in cmds[1]
    assert "'--dependency=afterok:<job id of train>'" in cmds[2]
    assert cmds[2].endswith(str(SLURM_DIR / "attack.sbatch"))


def test_submit_errors(tmp_path):
    no_sched = {"PATH": str(Path(sys.executable).parent) + os.pathsep + "/nonexistent"}
    res = submit(["--scheduler", "pbs", "--config", "tiny"], tmp_path, no_sched)
    assert res.returncode == 2 and "qsub not found on PATH" in res.stderr, res.stderr
    res = submit(["--scheduler", "slurm", "--config", "tiny", "--set", "generate.n_galaxy=3", "--dry-run"], tmp_path)
    assert res.returncode == 2 and "did you mean 'generate.n_galaxies'" in res.stderr, res.stderr
    res = submit(["--scheduler", "slurm", "--config", "tiny", "--set", "train.seeds=[0, 1]", "--dry-run"], tmp_path)
    assert res.returncode == 2 and "without spaces" in res.stderr, res.stderr
    # A scheduler that refuses: its stderr is shown.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "sbatch"
    fake.write_text("#!/bin/sh\necho 'sbatch: error: Invalid account or account/partition combination' >&2\nexit 1\n")
    fake.chmod(0o755)
    res = submit(["--scheduler", "slurm", "--config", "tiny", "--account", "nope"], tmp_path,
                 {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"})
    assert res.returncode == 2 and "Invalid account" in res.stderr and "sbatch exited 1" in res.stderr, res.stderr


# --- on a real Slurm ---------------------------------------------------------------------------

def show(slurm: Slurm, jobid: str) -> dict[str, str]:
    res = slurm.run(["scontrol", "show", "job", "-o", jobid])
    assert res.returncode == 0, res.stderr
    return dict(re.findall(r"(\w+)=(\S*)", res.stdout))


def wait(slurm: Slurm, jobid: str, cwd: Path, timeout: float = 180) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = show(slurm, jobid)
        if info["JobState"] in TERMINAL:
            return info
        time.sleep(0.5)
    slurm.run(["scancel", jobid])
    raise AssertionError(f"job {jobid} not finished: {info}\n{logs(cwd)}\n{slurm.logs()}")


def logs(cwd: Path) -> str:
    return "\n".join(f"----- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(cwd.glob("*.out")))


@pytest.mark.slurm
def test_submit_chain_on_slurm(slurm, tmp_path):
    args = ["--scheduler", "slurm", "--config", "tiny", "--stages", "generate", "train", "--venv", sys.prefix,
            "--ranks-per-node", "2", "--gpus-per-task", "0", *[a for s in QUICK for a in ("--set", s)]]
    res = subprocess.run([sys.executable, "-m", "hpcmorph", "submit", *args], cwd=tmp_path, env=slurm.env(),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["generate", "train"], res.stdout
    gen, train = (line.split()[1] for line in lines)
    # While generate runs (several seconds, MPI start-up included), train waits on it.
    info = show(slurm, train)
    assert info["Dependency"].startswith(f"afterok:{gen}"), info
    assert info["JobState"] == "PENDING", info
    for jobid in (gen, train):
        done = wait(slurm, jobid, tmp_path)
        assert (done["JobState"], done["ExitCode"]) == ("COMPLETED", "0:0"), f"{done}\n{logs(tmp_path)}"
    assert show(slurm, gen)["EndTime"] <= show(slurm, train)["StartTime"]
    assert show(slurm, train)["NumTasks"] == "2"
    run = tmp_path / "runs" / "tiny"
    assert (run / "galaxies.h5").exists() and (run / "regular" / "seed0" / "metrics.json").exists(), logs(tmp_path)


@pytest.mark.slurm
def test_train_job_checkpoints_and_requeues_itself_on_usr1(slurm, tmp_path):
    sets = ["generate.n_galaxies=40", "train.variants=[regular]", "train.epochs=3", "train.batch_size=2",
            "train.threads=1"]
    cli(["generate", "--config", "tiny", "--set", "generate.n_galaxies=40"], tmp_path)
    e = slurm.env(HPCMORPH_CONFIG="tiny", HPCMORPH_SET=" ".join(sets))
    res = subprocess.run(["sbatch", "--parsable", "--ntasks-per-node=1", "--gpus-per-task=0",
                          str(SLURM_DIR / "train.sbatch")], cwd=tmp_path, env=e, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    jobid = res.stdout.strip().split(";")[0]
    ckpt = tmp_path / "runs" / "tiny" / "regular" / "seed0" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline:
        assert show(slurm, jobid)["JobState"] in {"PENDING", "CONFIGURING", "RUNNING"}, logs(tmp_path)
        time.sleep(0.05)
    assert ckpt.exists(), logs(tmp_path)
    res = slurm.run(["scancel", "--signal=USR1", "--batch", jobid])
    assert res.returncode == 0, res.stderr
    info = wait(slurm, jobid, tmp_path, timeout=240)
    log = logs(tmp_path)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), f"{info}\n{log}\n{slurm.logs()}"
    assert int(info["Restarts"]) == 1, log
    assert "asking the stage to checkpoint" in log and "requeueing job" in log and "(restart 1)" in log, log
    assert "resuming at epoch" in log, log
    assert (ckpt.parent / "metrics.json").exists() and not ckpt.exists()
