"""Batch job scripts (jobs/slurm/*.sbatch, jobs/pbs/*.pbs) and ``hpcmorph submit``.

No PBS server is packaged for Debian: the PBS scripts' directives are checked statically and their
bodies run here with the variables PBS sets (PBS_O_WORKDIR, PBS_NODEFILE, PBS_JOBID), through an
``mpiexec`` that takes PALS/MPICH's ``-n N --ppn P`` and starts the ranks with OpenMPI. The Slurm
chain runs on the session's real single-node Slurm (conftest.py's ``slurm``)."""

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

from helpers import ROOT, SMALL_RUN, THREADS, assert_same_data, env, job_logs, sets, workdir

SLURM_DIR = ROOT / "jobs" / "slurm"
PBS_DIR = ROOT / "jobs" / "pbs"
COMMON = ROOT / "jobs" / "lib" / "common.sh"
SLURM_SCRIPTS = sorted(SLURM_DIR.glob("*.sbatch"))
PBS_SCRIPTS = sorted(PBS_DIR.glob("*.pbs"))
STAGES = ("generate", "train", "attack", "analyze", "report")
SMALL = SMALL_RUN


def directives(path: Path, prefix: str) -> list[str]:
    return [line[len(prefix):].strip() for line in path.read_text().splitlines() if line.startswith(prefix)]


# --- static checks -----------------------------------------------------------------------------

def test_every_stage_has_a_script_for_both_schedulers():
    assert {p.stem for p in SLURM_SCRIPTS} == set(STAGES)
    assert {p.stem for p in PBS_SCRIPTS} == set(STAGES)


@pytest.mark.slow
@pytest.mark.parametrize("path", SLURM_SCRIPTS + PBS_SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(path):
    res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("path", SLURM_SCRIPTS, ids=lambda p: p.name)
def test_slurm_directives(path):
    d = directives(path, "#SBATCH")
    assert "--requeue" in d, d
    assert f"--job-name=hpcmorph-{path.stem}" in d
    assert any(x.startswith("--time=") for x in d) and "--open-mode=append" in d
    text, common = path.read_text(), COMMON.read_text()
    assert f"scheduler=slurm stage={path.stem}\n" in text
    if path.stem in ("generate", "train", "attack"):
        # Resumable: near the time limit the job requeues itself and the rerun continues.
        assert "--signal=B:USR1@120" in d, d
        assert ("requeue_on_usr1 " in text or "checkpoint_on_signals" in text) and "run_stage" in text
        assert 'scontrol requeue "$SLURM_JOB_ID"' in (text if path.stem == "train" else common)
    else:
        # Rerun from the start: a requeue at the time limit would only meet the same limit again.
        assert not any(x.startswith("--signal") for x in d) and "scontrol requeue" not in text, d
        assert "requeue_on_usr1" not in text and text.rstrip().endswith("exec_stage"), text
    for var in ("HPCMORPH_CONFIG", "HPCMORPH_SET", "HPCMORPH_VENV", "HPCMORPH_IMAGE", "HPCMORPH_LAUNCHER",
                "HPCMORPH_HOME"):
        assert var in text, f"{path.name} does not document {var}"
        assert f"${{{var}" in common or var == "HPCMORPH_HOME", f"common.sh ignores {var}"
    assert '"${run[@]}" "$stage" --config "$config" "${sets[@]}"' in common
    if path.stem == "train":
        assert "--gpus-per-task=1" in d
        assert 'kill -USR1 "$pid"' in common and "checkpoint_on_signals" in text and "-eq $preempted" in text
    if path.stem == "analyze":
        assert "--nodes=1" in d and "--gpus-per-task=1" in d and "HPCMORPH_APPTAINER_FLAGS" in text, d
    if path.stem == "report":
        assert "--ntasks=1" in d and not any("gpu" in x for x in d), d
        assert any(re.fullmatch(r"--time=00:\d\d:00", x) for x in d), d


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
    text, common = path.read_text(), COMMON.read_text()
    assert 'cd "${PBS_O_WORKDIR:?}"' in common and '$(wc -l <"${PBS_NODEFILE:?}")' in common
    assert "mpiexec -n $ranks --ppn $ppn" in common
    assert f"scheduler=pbs\nstage={path.stem}\n" in text
    if path.stem in ("analyze", "report"):
        assert "-l select=1:system=polaris" in d, d
    if path.stem == "report":
        assert "ranks=1\n" in text and "HPCMORPH_RANKS_PER_NODE:-" not in text
        assert any(re.fullmatch(r"-l walltime=00:\d\d:00", x) for x in d), d
    else:
        assert re.search(r"^ppn=\$\{HPCMORPH_RANKS_PER_NODE:-\d+\}$", text, re.M), text


# What common.sh does once for every script; a script that does any of it itself has drifted.
SHARED = ("for kv in ${HPCMORPH_SET", "run=(", "OMPI_ALLOW_RUN_AS_ROOT", "OMP_NUM_THREADS", "wait \"$pid\"",
          "python3", "config=${HPCMORPH_CONFIG")


@pytest.mark.parametrize("path", SLURM_SCRIPTS + PBS_SCRIPTS, ids=lambda p: p.name)
def test_every_script_sources_the_common_preamble(path):
    text = path.read_text()
    # The same lookup in every script of a scheduler (the batch system runs a copy of the script).
    first = (SLURM_SCRIPTS if path.suffix == ".sbatch" else PBS_SCRIPTS)[0].read_text()
    lookup = first[first.index("# The lines every job script shares"):first.index('source "$home/jobs/lib/common.sh"')]
    assert lookup in text and "# shellcheck source=SCRIPTDIR/../lib/common.sh\n" in text
    assert text.count('source "$home/jobs/lib/common.sh"') == 1
    # The script's own lines come after its directives, the lookup, then the source line.
    assert text.index("set -euo pipefail") < text.index(lookup)
    assert not [s for s in SHARED if s in text], path.name


def run_copy(tmp_path: Path, script: Path, **extra: str) -> subprocess.CompletedProcess:
    """Run a copy of SCRIPT away from the checkout (as Slurm and PBS run their spool copy), from a
    submit folder that is not the checkout, its launcher only recording the command."""
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    copy = spool / "job_script"
    copy.write_text(script.read_text())
    launcher = tmp_path / "launch"
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o755)
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("localhost\n")
    e = {k: v for k, v in env().items() if not k.startswith(("SLURM_", "PBS_", "HPCMORPH_"))}
    e.update({"PBS_JOBID": "17.pbs01", "PBS_O_WORKDIR": str(tmp_path), "PBS_NODEFILE": str(nodefile),
              "HPCMORPH_LAUNCHER": str(launcher), "LAUNCH_LOG": str(tmp_path / "launch.log"),
              "HPCMORPH_CONFIG": "tiny", **extra})
    return subprocess.run(["bash", str(copy)], cwd=spool, env=e, capture_output=True, text=True, timeout=30)


def test_a_copied_script_finds_the_preamble_through_hpcmorph_home(tmp_path):
    res = run_copy(tmp_path, PBS_DIR / "report.pbs")
    assert res.returncode == 2 and "no jobs/lib/common.sh: set HPCMORPH_HOME" in res.stderr, res.stderr
    res = run_copy(tmp_path, PBS_DIR / "report.pbs", HPCMORPH_HOME=str(ROOT))
    assert res.returncode == 0, res.stderr
    assert "job 17.pbs01 on 1 node(s), 1 rank," in res.stderr, res.stderr
    assert (tmp_path / "launch.log").read_text() == "hpcmorph report --config tiny\n"


def test_attack_list_k_prints_the_k_of_one_pass(capsys):
    from hpcmorph.cli import main

    code = main(["attack", "--list-k", "--config", "tiny", "--set", "analyze.k_sweep=[1,3,2]", "--set",
                 "attack.pixels=2"])
    assert code == 0 and capsys.readouterr().out == "2 1 3\n"
    code = main(["attack", "--list-k", "--config", "tiny", "--set", "analyze.k_sweep=[4,4,1]", "--set",
                 "attack.pixels=1"])
    assert code == 0 and capsys.readouterr().out == "1 4\n"
    code = main(["attack", "--list-k", "--config", "tiny", "--set", "analyze.k_sweeps=[1]"])
    assert code == 2 and "did you mean 'analyze.k_sweep'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["attack", "--help"])
    assert "--list-k" in capsys.readouterr().out


LAUNCHER = """#!/usr/bin/env bash
# A launcher that only records its arguments, one line per launch.
echo "$*" >>"$LAUNCH_LOG"
"""


def run_attack_script(path: Path, tmp_path: Path, sets: str,
                      **extra: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run an attack job script's body here, its launcher only recording what it would start."""
    launcher = tmp_path / "launch"
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o755)
    log = tmp_path / "launch.log"
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("localhost\n")
    e = {k: v for k, v in env().items() if not k.startswith(("SLURM_", "PBS_"))}
    e.update({"SLURM_JOB_ID": "17", "PBS_JOBID": "17.pbs01", "PBS_O_WORKDIR": str(tmp_path),
              "PBS_NODEFILE": str(nodefile), "HPCMORPH_LAUNCHER": str(launcher), "LAUNCH_LOG": str(log),
              "HPCMORPH_CONFIG": "tiny", "HPCMORPH_SET": sets, "HPCMORPH_VENV": sys.prefix, **extra})
    res = subprocess.run(["bash", str(path)], cwd=tmp_path, env=e, capture_output=True, text=True, timeout=60)
    return res, log.read_text().splitlines() if log.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("path", [SLURM_DIR / "attack.sbatch", PBS_DIR / "attack.pbs"], ids=lambda p: p.name)
def test_attack_script_attacks_once_per_k(path, tmp_path):
    # attack.pixels first, then the rest of analyze.k_sweep, as hpcmorph.pipeline.attack_configs says.
    sets = "analyze.k_sweep=[1,3,2] attack.pixels=2 generate.split=[0.7,0.2,0.1]"
    res, launched = run_attack_script(path, tmp_path, sets)
    assert res.returncode == 0, res.stderr
    common = f"hpcmorph attack --config tiny --set {sets.replace(' ', ' --set ')} --set attack.pixels="
    assert launched == [common + k for k in ("2", "1", "3")], launched
    assert "k = 2, 1, 3" in res.stderr and "k=3" in res.stderr, res.stderr
    # The list given outright.
    (tmp_path / "launch.log").unlink()
    res, launched = run_attack_script(path, tmp_path, "", HPCMORPH_ATTACK_K="4 1")
    assert res.returncode == 0, res.stderr
    assert [line.rsplit("=", 1)[1] for line in launched] == ["4", "1"], launched
    # A bad override stops the job before any launch, naming the field.
    (tmp_path / "launch.log").unlink()
    res, launched = run_attack_script(path, tmp_path, "analyze.k_sweeps=[1,2]")
    assert res.returncode == 2 and "did you mean 'analyze.k_sweep'" in res.stderr, res.stderr
    assert launched == []


@pytest.mark.slow
def test_attack_script_stops_at_the_first_failed_attack(tmp_path):
    for path in (SLURM_DIR / "attack.sbatch", PBS_DIR / "attack.pbs"):
        fail = tmp_path / path.name
        fail.mkdir()
        failing = fail / "failing-launcher"
        failing.write_text('#!/usr/bin/env bash\necho "$*" >>"$LAUNCH_LOG"\nexit 3\n')
        failing.chmod(0o755)
        res, launched = run_attack_script(path, fail, "analyze.k_sweep=[1,2]", HPCMORPH_LAUNCHER=str(failing))
        assert res.returncode == 3 and len(launched) == 1, (path.name, res.stderr, launched)


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


def run_pbs(stage: str, cwd: Path, tmp_path: Path, sets: list[str], timeout: float = 240, ranks: int = 2):
    """Run jobs/pbs/STAGE.pbs as PBS would on one node (PBS_NODEFILE lists localhost once), with
    HPCMORPH_RANKS_PER_NODE=2 (as ``hpcmorph submit --ranks-per-node 2`` sets it for every stage);
    RANKS: the ranks the script should then start."""
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
    assert launched.startswith(f"-n {ranks} --ppn {ranks} {sys.prefix}/bin/hpcmorph {stage} --config tiny") or \
        launched.startswith(f"-n {ranks} --ppn {ranks} hpcmorph {stage} --config tiny"), launched
    return res


@pytest.mark.slow
@pytest.mark.mpi
def test_pbs_generate_and_train_bodies_run_on_two_ranks(tmp_path, tiny_galaxies):
    # generate as the session's tiny run (1 rank) made it; a short training after it.
    pbs_sets = ["generate.n_galaxies=40", "train.epochs=1", "train.batch_size=8", "train.variants=[regular]"]
    cwd = tmp_path / "work"
    cwd.mkdir()
    res = run_pbs("generate", cwd, tmp_path, pbs_sets)
    assert "job generate.1234.pbs01 on 1 node(s), 2 ranks" in res.stderr
    out = cwd / "runs" / "tiny" / "galaxies.h5"
    with h5py.File(out, "r") as f:
        assert f.attrs["ranks"] == 2
    assert_same_data(tiny_galaxies / "galaxies.h5", out)

    run_pbs("train", cwd, tmp_path, pbs_sets)
    seed = cwd / "runs" / "tiny" / "regular" / "seed0"
    assert (seed / "model.pt").exists() and (seed / "metrics.json").exists()
    assert (cwd / "runs" / "tiny" / "train_summary.json").exists()


@pytest.mark.mpi
@pytest.mark.slow
def test_pbs_attack_analyze_and_report_bodies_run(tmp_path, tiny_attacked):
    # The session's tiny run, trained and attacked at k = 1 with SMALL's settings.
    cwd = workdir(tmp_path, tiny_attacked[0], "work")
    run = cwd / "runs" / "tiny"

    # One launch per k of analyze.k_sweep=[1,2], each on 2 ranks (k = 1 is found up to date).
    res = run_pbs("attack", cwd, tmp_path, SMALL, timeout=300)
    assert "k = 1, 2" in res.stderr, res.stderr
    launched = (tmp_path / "mpiexec.log").read_text().splitlines()[-2:]
    assert [line.split()[:5] for line in launched] == [["-n", "2", "--ppn", "2", "hpcmorph"]] * 2, launched
    assert [line.split()[-1] for line in launched] == ["attack.pixels=1", "attack.pixels=2"], launched
    assert (run / "attack.h5").exists() and (run / "attack-k2.h5").exists(), res.stderr[-3000:]

    res = run_pbs("analyze", cwd, tmp_path, SMALL, timeout=300)
    assert "job analyze.1234.pbs01 on 1 node(s), 2 ranks" in res.stderr
    assert (run / "analysis" / "analysis.json").exists() and (run / "analysis" / "latents.h5").exists()

    # Serial whatever HPCMORPH_RANKS_PER_NODE says.
    res = run_pbs("report", cwd, tmp_path, SMALL, ranks=1)
    assert "job report.1234.pbs01 on 1 node(s), 1 rank" in res.stderr
    assert (run / "report" / "index.html").exists(), res.stderr[-3000:]


@pytest.mark.slow
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


def without_plan(cmd: str) -> str:
    """A dry-run command without what the plan adds (tests/test_plan.py checks those): the
    HPCMORPH_PLAN variable and the wall-time argument."""
    cmd = re.sub(r" HPCMORPH_PLAN='[^']*'", "", cmd).replace(",HPCMORPH_PLAN", "")
    cmd = re.sub(r" HPCMORPH_HOME=\S+", "", cmd).replace(",HPCMORPH_HOME", "")
    return re.sub(r" (--time=|-l walltime=)[0-9:]+", "", cmd)


@pytest.mark.slow
def test_submit_dry_run_pbs(tmp_path):
    res = submit(["--scheduler", "pbs", "--config", "tiny", "--set", "train.epochs=1", "--set",
                  "generate.split=[0.7,0.2,0.1]", "--account", "proj", "--queue", "prod", "--nodes", "4",
                  "--dry-run"], tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0::2] == [f"# {s}: {PBS_DIR / (s + '.pbs')}" for s in STAGES]
    # Every job is told where the checkout (jobs/lib/common.sh) is.
    assert all(f" HPCMORPH_HOME={ROOT} " in c and ",HPCMORPH_HOME" in c for c in lines[1::2]), lines
    cmds = [without_plan(c) for c in lines[1::2]]
    head = ("HPCMORPH_CONFIG=tiny HPCMORPH_SET='train.epochs=1 generate.split=[0.7,0.2,0.1]' "
            "qsub -v HPCMORPH_CONFIG,HPCMORPH_SET -A proj -q prod")
    for cmd in cmds[:3]:
        assert cmd.startswith(f"{head} -l select=4:system=polaris"), cmd
    # analyze and report stay on their one node.
    for cmd in cmds[3:]:
        assert cmd.startswith(f"{head} -W") and "select=" not in cmd, cmd
    assert "depend=" not in cmds[0]
    for prev, cmd in zip(STAGES, cmds[1:]):
        assert f"-W 'depend=afterok:<job id of {prev}>'" in cmd, cmd
    assert [c.split()[-1] for c in cmds] == [str(PBS_DIR / f"{s}.pbs") for s in STAGES]


@pytest.mark.slow
def test_submit_dry_run_slurm(tmp_path):
    res = submit(["--scheduler", "slurm", "--config", "tiny", "--venv", sys.prefix, "--gpus-per-task", "0",
                  "--dry-run"], tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0::2] == [f"# {s}: {SLURM_DIR / (s + '.sbatch')}" for s in STAGES]
    cmds = [without_plan(c) for c in lines[1::2]]
    assert all(f"HPCMORPH_VENV={sys.prefix} sbatch --parsable --export=ALL,HPCMORPH_CONFIG,HPCMORPH_VENV" in c
               for c in cmds), cmds
    assert "--dependency" not in cmds[0] and "--gpus-per-task" not in cmds[0]
    for prev, cmd in zip(STAGES, cmds[1:]):
        assert f"'--dependency=afterok:<job id of {prev}>' --kill-on-invalid-dep=yes" in cmd, cmd
    # The GPU stages' GPUs, replaced; not the others'.
    assert [("--gpus-per-task=0" in c) for c in cmds] == [False, True, False, True, False], cmds
    assert [c.split()[-1] for c in cmds] == [str(SLURM_DIR / f"{s}.sbatch") for s in STAGES]

    # --nodes sizes the big stages only; --ranks-per-node also analyze's, never report's single rank.
    res = submit(["--scheduler", "slurm", "--config", "tiny", "--nodes", "3", "--ranks-per-node", "2",
                  "--stages", "attack", "analyze", "report", "--dry-run"], tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [line.split()[1] for line in lines[0::2]] == ["attack:", "analyze:", "report:"], lines
    attack, analyze, report = lines[1::2]
    assert "--nodes=3 --ntasks-per-node=2 --ntasks=6" in attack and "--dependency" not in attack
    assert "--nodes" not in analyze and "--ntasks-per-node=2" in analyze
    assert "--nodes" not in report and "--ntasks" not in report


@pytest.mark.slow
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

@pytest.mark.slurm
@pytest.mark.slow
def test_submit_chain_on_slurm(slurm, tmp_path):
    """The five stages as five jobs, each job script run by Slurm, the attack job once per k."""
    args = ["--scheduler", "slurm", "--config", "tiny", "--venv", sys.prefix, "--ranks-per-node", "2",
            "--gpus-per-task", "0", *sets(SMALL)]
    res = subprocess.run([sys.executable, "-m", "hpcmorph", "submit", *args], cwd=tmp_path, env=slurm.env(),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(STAGES), res.stdout
    jobs = dict(line.split() for line in lines)
    # While generate runs (several seconds, MPI start-up included), train waits on it.
    info = slurm.job(jobs["train"])
    assert info["Dependency"].startswith(f"afterok:{jobs['generate']}"), info
    assert info["JobState"] == "PENDING", info
    done = {}
    for stage in STAGES:
        done[stage] = slurm.wait_done(jobs[stage], tmp_path, timeout=420)
        assert (done[stage]["JobState"], done[stage]["ExitCode"]) == ("COMPLETED", "0:0"), \
            f"{stage}: {done[stage]}\n{job_logs(tmp_path)}"
    for prev, stage in zip(STAGES, STAGES[1:]):
        assert done[prev]["EndTime"] <= done[stage]["StartTime"], (done[prev], done[stage])
    assert [done[s]["NumTasks"] for s in STAGES] == ["2", "2", "2", "2", "1"], done
    run = tmp_path / "runs" / "tiny"
    outputs = ["galaxies.h5", "regular/seed0/metrics.json", "mmd/seed0/metrics.json", "attack.h5", "attack-k2.h5",
               "analysis/analysis.json", "analysis/latents.h5", "report/index.html"]
    missing = [o for o in outputs if not (run / o).exists()]
    assert not missing, f"missing {missing}\n{job_logs(tmp_path)}"
    attack_log = (tmp_path / f"hpcmorph-attack-{jobs['attack']}.out").read_text()
    assert "k = 1, 2" in attack_log and "k=2" in attack_log, attack_log


@pytest.mark.slurm
def test_train_job_checkpoints_and_requeues_itself_on_usr1(slurm, tmp_path, tiny_galaxies):
    sets = ["generate.n_galaxies=40", "train.variants=[regular]", "train.epochs=3", "train.batch_size=2",
            f"train.threads={THREADS}"]
    tmp_path = workdir(tmp_path, tiny_galaxies)  # the job's working folder: the session's tiny data
    e = slurm.env(HPCMORPH_CONFIG="tiny", HPCMORPH_SET=" ".join(sets))
    res = subprocess.run(["sbatch", "--parsable", "--ntasks-per-node=1", "--gpus-per-task=0",
                          str(SLURM_DIR / "train.sbatch")], cwd=tmp_path, env=e, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    jobid = res.stdout.strip().split(";")[0]
    ckpt = tmp_path / "runs" / "tiny" / "regular" / "seed0" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline:
        state = slurm.job(jobid)["JobState"]
        assert state in {"PENDING", "CONFIGURING", "RUNNING"}, job_logs(tmp_path)
        time.sleep(0.05)
    assert ckpt.exists(), job_logs(tmp_path)
    res = slurm.run(["scancel", "--signal=USR1", "--batch", jobid])
    assert res.returncode == 0, res.stderr
    info = slurm.wait_done(jobid, tmp_path, timeout=240)
    log = job_logs(tmp_path)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), f"{info}\n{log}\n{slurm.logs()}"
    assert int(info["Restarts"]) == 1, log
    assert "asking the stage to checkpoint" in log and "requeueing job" in log and "(restart 1)" in log, log
    assert "resuming at epoch" in log, log
    assert (ckpt.parent / "metrics.json").exists() and not ckpt.exists()
