"""``hpcmorph submit --site``: each profile's job against the form its facility documents.

The documented forms below are typed from the facilities' own pages (URL beside each), not taken from
hpcmorph/sites.py, so a profile that drifts from its page fails here. Each site's job scripts are
made by a real ``hpcmorph submit`` (a scheduler that only records stands in for qsub/sbatch) and then
run here with bash up to the launch: the modules they load, what they export and the exact command
every rank would start with are recorded and compared. Nothing here reaches a facility: the module
system, mpiexec/srun and the container runtimes are stand-ins that record; docs/hpc.md says what was
and was not rehearsed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import types
from pathlib import Path

import pytest

from helpers import ROOT, env
from hpcmorph import sites

HPC_MD = ROOT / "docs" / "hpc.md"

# --- the documented forms -------------------------------------------------------------------------
# https://docs.alcf.anl.gov/polaris/containers/containers/ ("Running Containers on Polaris")
POLARIS_MODULES = ["ml use /soft/modulefiles", "ml spack-pe-base", "ml apptainer", "module load cray-mpich-abi"]
POLARIS_EXPORTS = ["export ADDITIONAL_PATH=/opt/cray/pe/pals/1.2.12/lib",
                   'export APPTAINERENV_LD_LIBRARY_PATH="$CRAY_LD_LIBRARY_PATH:$LD_LIBRARY_PATH:$ADDITIONAL_PATH"']
POLARIS_LAUNCH = ("mpiexec -hostfile $PBS_NODEFILE -n $PROCS -ppn $PPN apptainer exec --fakeroot -B /opt "
                  "-B /var/run/palsd/ $CONTAINER")
# https://github.com/argonne-lcf/container-registry/blob/main/containers/mpi/Polaris/job_submission.sh: the binds
# of ALCF's MPI container job, which leave the image's own /opt (where hpcmorph lives) visible.
POLARIS_REGISTRY_BINDS = "-B /opt/nvidia -B /var/run/palsd/ -B /opt/cray/pe -B /opt/cray/libfabric"
POLARIS_DIRECTIVES = ["-l select=2:system=polaris", "-l place=scatter", "-l filesystems=home:eagle"]
# https://docs.alcf.anl.gov/polaris/running-jobs/using-gpus/ (binding: depth hardware threads per rank)
POLARIS_BINDING = "mpiexec -n ${NTOTRANKS} --ppn ${NRANKS_PER_NODE} --depth=${NDEPTH} --cpu-bind depth"
# https://docs.olcf.ornl.gov/software/containers_on_frontier.html (and the examples it points to)
FRONTIER_MODULES = ["module load olcf-container-tools", "module load apptainer-enable-mpi"]
FRONTIER_GPU_MODULE = "module load apptainer-enable-gpu"
# https://docs.olcf.ornl.gov/software/analytics/pytorch_frontier.html
FRONTIER_GPU_SRUN = "srun -N2 -n16 -c7 --gpus-per-task=1 --gpu-bind=closest"
# github.com/olcf/olcf_containers_examples
#   frontier/containers_on_frontier_docs/apptainer_wrappers_lammps/cpu/submit.slurm
FRONTIER_CPU_SRUN = "srun -u -N 2 -n 112 --ntasks-per-node=56 apptainer --silent exec lammps.sif"
FRONTIER_CPU_EXPORT = "export MPICH_SMP_SINGLE_COPY_MODE=NONE"
# github.com/NERSC/podman-hpc etc/modules.d: mpich.yaml cli_arg mpi, gpu.yaml cli_arg gpu, nccl.yaml cli_arg nccl;
# the job of github.com/erf-model/ERF Docs/sphinx_doc/containers.rst ("Run container on Perlmutter")
PERLMUTTER_GPU = ("srun -N 1 -n 4 -c 32 --ntasks-per-node=4 --gpus-per-node=4 "
                  "podman-hpc run --rm --mpi --gpu -v /pscratch/sd/u/user/erf/abl:/run -w /run erf:1.00")
PERLMUTTER_SBATCH = ["--constraint=gpu", "-q regular"]


def options(command: str) -> dict[str, str | None]:
    """A command line's options as {name: value}: -N2, -N 2 and --x=y, --x y alike (an option takes
    the next word as its value unless that word is an option itself)."""
    words = shlex.split(command)
    out: dict[str, str | None] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w.startswith("-") and len(w) > 1:
            if w.startswith("--") and "=" in w:
                name, _, value = w.partition("=")
            elif not w.startswith("--") and len(w) > 2 and w[2:].isdigit():
                name, value = w[:2], w[2:]
            elif i + 1 < len(words) and not words[i + 1].startswith("-"):
                name, value = w, words[i + 1]
                i += 1
            else:
                name, value = w, None
            out[name] = value
        i += 1
    return out


# --- the jobs, made by hpcmorph submit and run up to their launch --------------------------------

RECORDER = """#!/usr/bin/env bash
# Stands in for {name}: records its arguments and the variables a site's ranks would see.
python3 - "$@" <<'EOF'
import json, os, sys
keep = ("APPTAINERENV_LD_LIBRARY_PATH", "MPICH_SMP_SINGLE_COPY_MODE", "NCCL_SOCKET_IFNAME", "OMP_NUM_THREADS")
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({{"program": "{name}", "argv": sys.argv[1:],
                        "env": {{k: os.environ[k] for k in keep if k in os.environ}}}}) + "\\n")
EOF
"""
SCHEDULER = """#!/usr/bin/env bash
# Stands in for {name}: records the command line and prints a job id.
printf '%s\\n' "$*" >>"$RECORD.{name}"
echo {jobid}
"""
# Lmod's `module` and `ml` as shell functions that record; loading cray-mpich-abi sets what it sets.
MODULE_FUNC = ('() { echo "module $*" >>"$RECORD.modules"; '
               'if [[ "$*" == "load cray-mpich-abi" ]]; then '
               'export CRAY_LD_LIBRARY_PATH=/fake/cray-mpich-abi/lib; fi; }')
ML_FUNC = '() { echo "ml $*" >>"$RECORD.modules"; }'


@pytest.fixture
def bench(tmp_path, monkeypatch):
    """A folder with recording stand-ins for qsub, sbatch, mpiexec and srun first on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("mpiexec", "srun"):
        (bindir / name).write_text(RECORDER.format(name=name))
    (bindir / "qsub").write_text(SCHEDULER.format(name="qsub", jobid="1234.polaris-pbs-01"))
    (bindir / "sbatch").write_text(SCHEDULER.format(name="sbatch", jobid="5678"))
    for f in bindir.iterdir():
        f.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("RECORD", str(tmp_path / "record"))
    return types.SimpleNamespace(work=work, record=tmp_path / "record", tmp=tmp_path)


def submit(capsys, args: list[str]):
    """``hpcmorph submit ARGS`` in this process: (exit code, stdout, stderr)."""
    from hpcmorph.cli import main

    code = main(["submit", *args])
    out = capsys.readouterr()
    return types.SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def run_job(bench, script: Path, **extra: str) -> tuple[list[str], list[dict]]:
    """Run a submitted job script here as its batch system would start it; the module commands it
    ran and the launches it made (one per attack k)."""
    nodefile = bench.tmp / "nodefile"
    nodefile.write_text("x3001c0s13b0n0\nx3001c0s13b1n0\n")
    e = {k: v for k, v in env().items() if not k.startswith(("SLURM_", "PBS_", "HPCMORPH_"))}
    e.update({"PBS_JOBID": "1234.polaris-pbs-01", "PBS_O_WORKDIR": str(bench.work), "PBS_NODEFILE": str(nodefile),
              "SLURM_JOB_ID": "5678", "SLURM_SUBMIT_DIR": str(bench.work), "HPCMORPH_CONFIG": "tiny",
              # As hpcmorph submit passes it on: where the scripts' jobs/lib/common.sh is.
              "HPCMORPH_HOME": str(ROOT),
              "HPCMORPH_ATTACK_K": "1 2", "LD_LIBRARY_PATH": "/host/lib",
              "BASH_FUNC_module%%": MODULE_FUNC, "BASH_FUNC_ml%%": ML_FUNC, **extra})
    for f in bench.record.parent.glob("record*"):
        f.unlink()
    res = subprocess.run(["bash", str(script)], cwd=bench.work, env=e, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"{script.name} exited {res.returncode}\n{res.stderr[-3000:]}"
    modules = (bench.record.parent / "record.modules")
    launches = [json.loads(line) for line in bench.record.read_text().splitlines()] if bench.record.exists() else []
    return (modules.read_text().splitlines() if modules.exists() else []), launches


def jobs_of(bench, site: str, suffix: str) -> dict[str, Path]:
    found = {p.name.split(".")[0]: p for p in (bench.work / "runs" / "tiny" / "jobs").glob(f"*.{site}.{suffix}")}
    assert set(found) == {"generate", "train", "attack", "analyze", "report"}, found
    return found


def test_polaris_jobs_load_cray_mpich_abi_and_launch_as_alcf_documents(bench, capsys):
    image = bench.tmp / "hpcmorph-mpich.sif"
    res = submit(capsys, ["--site", "polaris", "--config", "tiny", "--account", "myproj", "--image", str(image)])
    assert res.returncode == 0, res.stderr
    # qsub, one job per stage, each waiting on the one before; the generated script submitted.
    calls = (bench.tmp / "record.qsub").read_text().splitlines()
    assert len(calls) == 5 and "depend=" not in calls[0]
    assert all("-W depend=afterok:1234.polaris-pbs-01 " in c for c in calls[1:]), calls
    jobs = jobs_of(bench, "polaris", "pbs")
    assert [c.split()[-1] for c in calls] == [f"runs/tiny/jobs/{s}.polaris.pbs" for s in sites_stages()]

    for stage, script in jobs.items():
        text = script.read_text()
        directives = [line[4:].strip() for line in text.splitlines() if line.startswith("#PBS")]
        assert {d for d in POLARIS_DIRECTIVES if "select" not in d} <= set(directives), directives
        # The block: its lines in the documented order, after every directive.
        for line in [*POLARIS_MODULES, *POLARIS_EXPORTS]:
            assert line in text.splitlines(), (stage, line)
        assert text.index("#PBS -k doe") < text.index(POLARIS_MODULES[0]) < text.index("set -euo pipefail")

        modules, launches = run_job(bench, script)
        assert modules == POLARIS_MODULES, modules
        assert len(launches) == (2 if stage == "attack" else 1), launches
        gpu = stage in ("train", "analyze")
        nodes, ppn = (2, 32) if stage in ("generate", "attack") else (1, 4 if gpu else 32)
        if stage == "report":
            ppn = 1
        for launch in launches:
            assert launch["program"] == "mpiexec"
            # The container page's launch with its numbers filled in, the binding of Running Jobs
            # between the launcher and the container, `apptainer exec --fakeroot` with the binds of
            # ALCF's MPI container job (not its /opt/nvidia: the image carries its CUDA libraries), the
            # GPU driver (--nv) on GPU jobs, then the image.
            launch_words = POLARIS_LAUNCH.replace("$PBS_NODEFILE", str(bench.tmp / "nodefile")) \
                .replace("$PROCS", str(nodes * ppn)).replace("$PPN", str(ppn)).split()
            binds = [w for pair in re.findall(r"-B (\S+)", POLARIS_REGISTRY_BINDS) if "nvidia" not in pair
                     for w in ("-B", pair)]
            want = [*launch_words[1:7], f"--depth={64 // ppn}", "--cpu-bind", "depth",
                    *launch_words[7:10], *binds, *(["--nv"] if gpu else []), str(image)]
            assert launch["argv"][:len(want)] == want, (stage, launch["argv"])
            assert launch["argv"][len(want):len(want) + 2] == ["hpcmorph", stage]
            # The site's MPICH ABI library first inside the container, as the page sets it.
            assert launch["env"]["APPTAINERENV_LD_LIBRARY_PATH"] == \
                "/fake/cray-mpich-abi/lib:/host/lib:/opt/cray/pe/pals/1.2.12/lib"
    # The binding flags are the ones the GPU page writes.
    assert {"--depth", "--cpu-bind"} <= set(options(POLARIS_BINDING))


def sites_stages() -> list[str]:
    return ["generate", "train", "attack", "analyze", "report"]


def test_frontier_jobs_use_olcfs_container_modules_and_srun(bench, capsys):
    image = bench.tmp / "hpcmorph-mpich.sif"
    res = submit(capsys, ["--site", "frontier", "--config", "tiny", "--account", "abc123", "--nodes", "2",
                          "--image", str(image)])
    assert res.returncode == 0, res.stderr
    calls = (bench.tmp / "record.sbatch").read_text().splitlines()
    assert [c.split()[-1] for c in calls] == [f"runs/tiny/jobs/{s}.frontier.sbatch" for s in sites_stages()]
    assert all("--account=abc123" in c for c in calls)
    for stage, script in jobs_of(bench, "frontier", "sbatch").items():
        modules, launches = run_job(bench, script)
        gpu = stage in ("train", "analyze")
        assert modules == ["module reset", *FRONTIER_MODULES, *([FRONTIER_GPU_MODULE] if gpu else [])], modules
        for launch in launches:
            assert launch["program"] == "srun"
            opts = options(shlex.join(launch["argv"]))
            image_at = launch["argv"].index(str(image))
            assert launch["argv"][image_at - 2:image_at] == ["apptainer", "exec"], launch["argv"]
            if gpu:
                # PyTorch on Frontier's srun: 2 nodes x 8 GCDs, 7 cores each, one GPU per task, closest.
                documented = options(FRONTIER_GPU_SRUN)
                if stage == "analyze":  # one node, as everywhere
                    documented.update({"-N": "1", "-n": "8"})
                assert {k: opts.get(k) for k in documented} == documented, (stage, launch["argv"])
                assert launch["env"]["NCCL_SOCKET_IFNAME"] == "hsn0,hsn1,hsn2,hsn3"
            else:
                documented = {k: v for k, v in options(FRONTIER_CPU_SRUN).items() if k not in ("-u", "--silent")}
                if stage == "report":
                    documented = {"-N": "1", "-n": "1", "--ntasks-per-node": "1"}
                assert {k: opts.get(k) for k in documented} == documented, (stage, launch["argv"])
                assert launch["env"]["MPICH_SMP_SINGLE_COPY_MODE"] == "NONE"
                assert FRONTIER_CPU_EXPORT in script.read_text().splitlines()


def test_perlmutter_jobs_run_podman_hpc_with_the_cray_mpich_swap(bench, capsys):
    res = submit(capsys, ["--site", "perlmutter", "--config", "tiny", "--account", "m1234", "--image",
                          "hpcmorph-mpich:1.0"])
    assert res.returncode == 0, res.stderr
    calls = (bench.tmp / "record.sbatch").read_text().splitlines()
    for stage, call in zip(sites_stages(), calls):
        gpu = stage in ("train", "analyze")
        opts = options(call)
        assert opts["--qos"] == "regular" and opts["--constraint"] == ("gpu" if gpu else "cpu"), call
    documented = options(PERLMUTTER_GPU.split(" podman-hpc ")[0])
    for stage, script in jobs_of(bench, "perlmutter", "sbatch").items():
        modules, launches = run_job(bench, script)
        assert modules == []
        gpu = stage in ("train", "analyze")
        for launch in launches:
            argv = launch["argv"]
            at = argv.index("podman-hpc")
            opts = options(shlex.join(argv[:at]))
            if gpu:
                # ERF's GPU job: 4 tasks on the node, 32 hardware threads each.
                assert {k: opts.get(k) for k in ("-n", "-c", "--ntasks-per-node")} == \
                    {k: documented[k] for k in ("-n", "-c", "--ntasks-per-node")}, argv
            image_at = argv.index("hpcmorph-mpich:1.0")
            run = argv[at:image_at]
            assert run[:4] == ["podman-hpc", "run", "--rm", "--mpi"], run
            assert ("--gpu" in run and "--nccl" in run) == gpu, run
            # The working directory bound at its own path and entered (podman's -v and -w).
            assert run[run.index("-v") + 1] == f"{bench.work}:{bench.work}"
            assert run[run.index("-w") + 1] == str(bench.work)
            assert argv[image_at + 1:image_at + 3] == ["hpcmorph", stage]


def test_generic_site_is_the_scripts_as_they_are(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["--config", "tiny", "--set", f"run.root={tmp_path}", "--dry-run"]
    plain = submit(capsys, ["--scheduler", "pbs", *base])
    generic = submit(capsys, ["--scheduler", "pbs", "--site", "generic", *base])
    assert plain.returncode == generic.returncode == 0 and plain.stdout == generic.stdout
    assert "module" not in plain.stdout and "HPCMORPH_CONTAINER" not in plain.stdout


def test_a_dry_run_prints_each_whole_job_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = submit(capsys, ["--site", "polaris", "--config", "tiny", "--image", "x.sif", "--dry-run"])
    assert res.returncode == 0, res.stderr
    for stage in sites_stages():
        assert f"# {stage}: {ROOT / 'jobs' / 'pbs' / stage}.pbs with the polaris block, written to " \
               f"runs/tiny/jobs/{stage}.polaris.pbs" in res.stdout
        assert f"# {stage}: submitted with" in res.stdout
    assert res.stdout.count("#!/bin/bash -l") == 5 and res.stdout.count("module load cray-mpich-abi") == 5
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args,message", [
    (["--site", "polaris", "--scheduler", "slurm"], "--site polaris runs pbs jobs, not slurm"),
    (["--site", "generic"], "--scheduler: required"),
    (["--site", "polaris", "--nodes", "8"], "queue debug takes 1 to 2 nodes per job, not 8"),
    (["--site", "polaris", "--nodes", "8", "--queue", "prod"], "queue prod takes 10 to 496 nodes per job, not 8"),
])
def test_a_job_the_site_rules_out_is_one_line(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    res = submit(capsys, [*args, "--config", "tiny", "--dry-run"])
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("hpcmorph: error: submit: "), res.stderr
    assert message in lines[0], lines[0]


def test_polaris_prod_queue_takes_ten_nodes(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = submit(capsys, ["--site", "polaris", "--nodes", "12", "--queue", "prod", "--config", "tiny", "--dry-run",
                          "--stages", "generate"])
    assert res.returncode == 0, res.stderr
    assert "-q prod -l select=12:system=polaris" in res.stdout
    assert 'export HPCMORPH_LAUNCHER="mpiexec -hostfile $PBS_NODEFILE -n 384 -ppn 32 --depth=2 --cpu-bind depth"' \
        in res.stdout


def test_without_an_image_a_site_gives_only_its_launch_line():
    for site in (sites.POLARIS, sites.FRONTIER, sites.PERLMUTTER):
        lines = [line for line in sites.block(site, gpu=True, nodes=1, ranks=4, ppn=4, image=None)
                 if not line.startswith("#")]
        assert len(lines) == 1 and lines[0].startswith('export HPCMORPH_LAUNCHER="'), lines


def test_plan_sizes_nodes_as_the_site_does(capsys):
    from hpcmorph.cli import main

    assert main(["plan", "--config", "tiny", "--ranks", "16", "--device", "cuda", "--site", "frontier", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["ranks_per_node"] == 8
    assert {s["stage"]: s["nodes"] for s in made["stages"]}["train"] == 2


# --- every value of a profile from its site's pages -------------------------------------------------

def every_block() -> list[tuple[str, list[str]]]:
    out = []
    for site in sites.SITES.values():
        for gpu in (False, True):
            out.append((site.name, sites.block(site, gpu=gpu, nodes=2, ranks=8, ppn=4, image="IMAGE")))
    return out


def test_every_module_and_path_a_block_names_is_read_on_its_sites_pages():
    """A module or a path a job uses that its facility does not document is a defect: each must be
    (part of) a fact read on the site's own pages or repositories."""
    for name, block in every_block():
        read = [f.text for f in sites.SITES[name].facts() if f.read]
        for line in block:
            if line.startswith("#"):
                continue
            if line.startswith(("module ", "ml ")):
                assert line in read, f"{name}: {line!r} is not on the site's pages"
            for path in re.findall(r"(?<![\w$}])/[\w./-]+", line):
                assert any(path in text for text in read), f"{name}: the path {path} is not on the site's pages"


def test_every_source_is_cited_in_docs_and_every_unread_fact_is_named_there():
    text = HPC_MD.read_text()
    for site in sites.SITES.values():
        for fact in site.facts():
            assert fact.source in text, f"{site.name}: {fact.source} is not cited in docs/hpc.md"
            if not fact.read:
                assert f"`{fact.text}`" in text, \
                    f"{site.name}: the unread fact {fact.text!r} is not named in docs/hpc.md"
    for name in ("polaris", "frontier", "perlmutter"):
        assert f"--site {name}" in text


def test_the_options_reader():
    assert options("srun -N2 -n16 -c7 --gpus-per-task=1 --gpu-bind=closest x") == \
        {"-N": "2", "-n": "16", "-c": "7", "--gpus-per-task": "1", "--gpu-bind": "closest"}
    assert options("mpiexec -n 8 --ppn 4 --depth=8 --cpu-bind depth --verbose -x") == \
        {"-n": "8", "--ppn": "4", "--depth": "8", "--cpu-bind": "depth", "--verbose": None, "-x": None}
