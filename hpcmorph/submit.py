"""``hpcmorph submit``: the stages as a chain of batch jobs, each waiting on the previous one.

    hpcmorph submit --scheduler slurm --config paper --account myproj
    hpcmorph submit --scheduler pbs --config paper --account myproj --queue prod --nodes 8 --dry-run

Each stage is submitted with its script from ``jobs/<scheduler>/`` (``generate``, ``train``, ``attack``,
``analyze``, ``report``), the next one with an ``afterok`` dependency on the previous job id
(``sbatch --dependency=afterok:ID``, ``qsub -W depend=afterok:ID``). The config and the overrides
reach the jobs as environment variables (``HPCMORPH_CONFIG``, ``HPCMORPH_SET``,
``HPCMORPH_VENV``/``HPCMORPH_IMAGE``, ...), named in
``--export=ALL,NAME,...`` / ``-v NAME,...`` and given their values in the submitting process's
environment, so values holding commas (``[0.7,0.2,0.1]``) survive. ``HPCMORPH_HOME`` names the
checkout whose ``jobs/lib/common.sh`` the scripts source (the part they share): Slurm and PBS run a
copy of the script, so the job could not find it otherwise from another submit folder. The file is
sourced, not copied into the scripts, so a job submitted by hand (``sbatch jobs/slurm/train.sbatch``)
and one submitted here run the same lines; the batch script itself runs on the node outside any
container (only the ranks run in ``HPCMORPH_IMAGE``/``HPCMORPH_CONTAINER``), where the checkout is.

Prints one line per stage: the stage and its job id. ``--dry-run`` prints each script and the exact
command and submits nothing.

``--nodes`` and ``--ranks-per-node`` size the big stages (generate, train, attack). ``analyze`` always
runs on one node (``--ranks-per-node`` still sets its ranks) and ``report`` on one rank. The attack job
attacks once per pixel count k (``attack.pixels``, then the rest of ``analyze.k_sweep``), in turn.

``--site polaris|frontier|perlmutter`` (hpcmorph/sites.py) submits each script with the site's block
put in after its directives: the modules, exports, launch line and container command that facility
documents, sized from its nodes (one rank per GPU for train and analyze, one per usable core for
generate and attack). The scripts so made are written to ``<run.root>/<run.name>/jobs/`` and submitted
from there; ``--dry-run`` prints them whole, with the command.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import sites
from .errors import UserError
from .layout import RunLayout
from .stages import GPU_JOB_STAGES, ONE_NODE, SERIAL
from .stages import NAMES as STAGES
from .stages import STAGES as STAGE_TABLE

SCHEDULERS = {"slurm": ("sbatch", ".sbatch"), "pbs": ("qsub", ".pbs")}
# Ranks per node a stage's scripts assume (hpcmorph.stages.Stage.ranks_per_node).
RANKS_PER_NODE = {s.name: s.ranks_per_node for s in STAGE_TABLE}


class SubmitError(UserError):
    """A job chain that cannot be submitted as asked: exit 2 with this one-line message."""


def available_stages() -> list[str]:
    """The stages that exist in this installation, in chain order."""
    out = []
    for stage in STAGES:
        if importlib.util.find_spec(f"hpcmorph.{stage}") is not None:
            out.append(stage)
    return out


def jobs_dir() -> Path:
    env = os.environ.get("HPCMORPH_JOBS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "jobs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", choices=sorted(SCHEDULERS),
                   help="batch system (default: the site's; required with --site generic)")
    p.add_argument("--site", default="generic", choices=list(sites.SITES),
                   help="the facility whose documented modules, binds, environment and launch line the jobs "
                   "use (hpcmorph/sites.py; default generic: the job scripts as they are)")
    p.add_argument("--config", "-c", default="laptop", metavar="PRESET|YAML",
                   help="preset name or YAML file (default: laptop); a file is passed by absolute path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field in every stage (repeatable; no spaces: [1,2] not [1, 2])")
    p.add_argument("--stages", nargs="+", metavar="STAGE", default=None,
                   help=f"stages to chain, in this order (default: every one that exists of {', '.join(STAGES)})")
    p.add_argument("--account", "-A", help="account / project to charge (sbatch --account, qsub -A)")
    p.add_argument("--queue", "-q", help="partition (Slurm) or queue (PBS)")
    p.add_argument("--nodes", type=int,
                   help="nodes per job of generate, train and attack (default: the script's; analyze and "
                   "report run on one node)")
    p.add_argument("--ranks-per-node", type=int,
                   help="MPI ranks per node (default: the script's; with --nodes on Slurm: train 4, generate "
                   "and attack 32); not for report, which runs one rank")
    p.add_argument("--gpus-per-task", type=int,
                   help="Slurm: GPUs per rank for train and analyze (the scripts' default is 1; 0 for CPU nodes)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--image", help="Apptainer image (.sif) holding hpcmorph (HPCMORPH_IMAGE); with --site "
                       "perlmutter a podman-hpc image name")
    where.add_argument("--venv", help="virtualenv holding hpcmorph (HPCMORPH_VENV)")
    p.add_argument("--launcher", help="how ranks are started in every job (HPCMORPH_LAUNCHER)")
    p.add_argument("--scheduler-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for every sbatch/qsub call, e.g. --scheduler-arg=--time=00:30:00 "
                   "(repeatable)")
    p.add_argument("--time", action="append", default=[], metavar="[STAGE=]HH:MM:SS",
                   help="wall time of every job, or of one stage's job (repeatable); default: the plan's "
                   "prediction for the job's ranks with its margin (hpcmorph plan)")
    p.add_argument("--dry-run", action="store_true", help="print each script and command; submit nothing")


@dataclass
class Submission:
    stage: str
    script: Path
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # With a site: the job script as submitted (the stage's script with the site's block) and where
    # it is written before submission (the last argument of argv).
    text: str | None = None
    written: Path | None = None

    def shell(self) -> str:
        """The exact command, as one copy-pasteable shell line."""
        assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"{assigns} {shlex.join(self.argv)}".strip()


def _pbs_select(script: Path, nodes: int) -> str:
    """The script's select statement with its node count replaced (keeps e.g. :system=polaris)."""
    m = re.search(r"^#PBS\s+-l\s+select=\d+(\S*)", script.read_text(), re.M)
    return f"select={nodes}{m.group(1) if m else ''}"


def plan(args: argparse.Namespace, cfg=None) -> list[Submission]:
    """The submissions, in order; each one's dependency is filled in at submit time (``{prev}``)."""
    if cfg is None:
        from . import config as config_mod

        cfg = config_mod.load(args.config, args.overrides)
    stages = args.stages or available_stages()
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SubmitError(f"--stages: unknown stage {unknown[0]!r}; choose from {', '.join(STAGES)}")
    for kv in args.overrides:
        if "=" not in kv or any(c.isspace() for c in kv):
            raise SubmitError(f"--set {kv!r}: expected KEY=VALUE without spaces (write [1,2], not [1, 2])")
    site = sites.get(getattr(args, "site", "generic"))
    scheduler = args.scheduler or site.scheduler
    if scheduler is None:
        raise SubmitError("--scheduler: required (slurm or pbs), or name a --site")
    if site.scheduler and scheduler != site.scheduler:
        raise SubmitError(f"--site {site.name} runs {site.scheduler} jobs, not {scheduler}")
    args.scheduler = scheduler
    program, ext = SCHEDULERS[args.scheduler]
    config = args.config
    if Path(config).is_file():
        config = str(Path(config).resolve())
    env = {"HPCMORPH_CONFIG": config}
    if args.overrides:
        env["HPCMORPH_SET"] = " ".join(args.overrides)
    image = None
    if args.image:
        image = str(Path(args.image).resolve()) if site.image_is_file else args.image
        if site is sites.GENERIC:
            env["HPCMORPH_IMAGE"] = image
    if args.venv:
        env["HPCMORPH_VENV"] = str(Path(args.venv).resolve())
    if args.launcher:
        env["HPCMORPH_LAUNCHER"] = args.launcher
    if args.ranks_per_node and args.scheduler == "pbs" and site is sites.GENERIC:
        env["HPCMORPH_RANKS_PER_NODE"] = str(args.ranks_per_node)
    # Where the scripts find jobs/lib/common.sh: the batch system runs a copy of each script, away from
    # the checkout, and a job submitted from another folder has no other way to name it.
    env["HPCMORPH_HOME"] = str(jobs_dir().resolve().parent)
    scripts = {stage: jobs_dir() / args.scheduler / f"{stage}{ext}" for stage in stages}
    for stage, script in scripts.items():
        if not script.is_file():
            raise SubmitError(f"no job script for stage {stage!r}: {script}")
    sizes = None if site is sites.GENERIC else {s: _site_size(args, site, s, scripts[s]) for s in stages}
    times = _wall_times(args, scripts, cfg, sizes)

    out = []
    for stage in stages:
        script = scripts[stage]
        time_args, plan_line = times[stage]
        stage_env = {**env, "HPCMORPH_PLAN": plan_line}
        size = sizes[stage] if sizes else None
        if size and args.scheduler == "pbs":
            stage_env["HPCMORPH_RANKS_PER_NODE"] = str(size.ppn)
        names = ",".join(stage_env)
        nodes = None if stage in ONE_NODE else args.nodes
        ranks_per_node = None if stage in SERIAL else args.ranks_per_node
        if size:
            nodes, ranks_per_node = size.nodes, size.ppn
        if args.scheduler == "slurm":
            argv = [program, "--parsable", f"--export=ALL,{names}"]
            if args.account:
                argv.append(f"--account={args.account}")
            queue = args.queue or (site.default_queue.text if site.default_queue else None)
            if queue:
                argv.append(f"{site.queue_flag}={queue}")
            if nodes:
                ppn = ranks_per_node or RANKS_PER_NODE[stage]
                argv += [f"--nodes={nodes}", f"--ntasks-per-node={ppn}", f"--ntasks={nodes * ppn}"]
            elif ranks_per_node:
                argv.append(f"--ntasks-per-node={ranks_per_node}")
            if stage in GPU_JOB_STAGES and args.gpus_per_task is not None:
                argv.append(f"--gpus-per-task={args.gpus_per_task}")
            if size:
                argv += [f.text for f in (*site.scheduler_args,
                                          *(site.scheduler_args_gpu if size.gpu else site.scheduler_args_cpu))]
            if out:
                # A failed upstream job cancels the rest instead of leaving them pending forever.
                argv += ["--dependency=afterok:{prev}", "--kill-on-invalid-dep=yes"]
        else:
            argv = [program, "-v", names]
            if args.account:
                argv += ["-A", args.account]
            if args.queue:
                argv += ["-q", args.queue]
            if nodes:
                argv += ["-l", _pbs_select(script, nodes)]
            if out:
                argv += ["-W", "depend=afterok:{prev}"]
        text = written = None
        if size:
            sites.check_queue(site, args.queue or _script_queue(script), size.nodes)
            lines = sites.block(site, gpu=size.gpu, nodes=size.nodes, ranks=size.nodes * size.ppn, ppn=size.ppn,
                                image=image, launcher=not args.launcher)
            text = with_block(script.read_text(), lines)
            written = RunLayout.of(cfg).job_script(stage, site.name, ext)
        argv += [*time_args, *args.scheduler_arg, str(written or script)]
        out.append(Submission(stage, script, argv, stage_env, text, written))
    return out


@dataclass(frozen=True)
class Size:
    """A job's nodes, ranks per node and whether its ranks run on GPUs."""

    nodes: int
    ppn: int
    gpu: bool


def _script_nodes(args: argparse.Namespace, script: Path) -> int:
    """The nodes the script asks for itself (PBS select=N, Slurm --nodes=N), else 1."""
    text = script.read_text()
    if args.scheduler == "pbs":
        m = re.search(r"^#PBS\s+-l\s+select=(\d+)", text, re.M)
    else:
        m = re.search(r"^#SBATCH\s+--nodes=(\d+)", text, re.M)
    return int(m.group(1)) if m else 1


def _script_queue(script: Path) -> str | None:
    m = re.search(r"^#PBS\s+-q\s+(\S+)", script.read_text(), re.M)
    return m.group(1) if m else None


def _site_size(args: argparse.Namespace, site: sites.Site, stage: str, script: Path) -> Size:
    """A stage's job at a site: one rank per GPU of the site's GPU nodes for train and analyze
    (unless --gpus-per-task 0), one rank per usable core otherwise; --nodes and --ranks-per-node
    win; analyze stays on one node and report on one rank, as everywhere."""
    gpu = stage in GPU_JOB_STAGES and args.gpus_per_task != 0
    if stage in SERIAL:
        return Size(1, 1, False)
    nodes = 1 if stage in ONE_NODE else (args.nodes or _script_nodes(args, script))
    return Size(nodes, args.ranks_per_node or sites.ranks_per_node(site, gpu), gpu)


def with_block(script: str, block: list[str]) -> str:
    """The job script with a site's lines put in after its last batch directive (directives must
    come before the first command, or the batch system stops reading them)."""
    lines = script.splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith(("#SBATCH", "#PBS")))
    return "\n".join([*lines[:last + 1], *block, *lines[last + 1:]]) + "\n"


def _script_ranks(args: argparse.Namespace, stage: str, script: Path) -> int:
    """MPI ranks the job will run: the command line's sizes, else the script's own directives."""
    if stage in SERIAL:
        return 1
    nodes = None if stage in ONE_NODE else args.nodes
    text = script.read_text()
    if args.scheduler == "slurm":
        def directive(name: str) -> int | None:
            m = re.search(rf"^#SBATCH\s+--{name}=(\d+)", text, re.M)
            return int(m.group(1)) if m else None

        if nodes:
            return nodes * (args.ranks_per_node or RANKS_PER_NODE[stage])
        if directive("ntasks"):
            return directive("ntasks")  # a fixed task count wins over --ntasks-per-node
        return (directive("nodes") or 1) * (args.ranks_per_node or directive("ntasks-per-node") or 1)
    m = re.search(r"^#PBS\s+-l\s+select=(\d+)", text, re.M)
    return (nodes or (int(m.group(1)) if m else 1)) * (args.ranks_per_node or RANKS_PER_NODE[stage])


def _user_time(args: argparse.Namespace, stage: str) -> str | None:
    """The wall time the user gave for this stage (--time, or a time in --scheduler-arg), or None."""
    for arg in args.scheduler_arg:
        if re.match(r"(--time\b|-t\b|.*walltime=)", arg):
            return arg
    found = None
    for value in args.time:
        key, _, when = value.rpartition("=")
        if key and key not in STAGES:
            raise SubmitError(f"--time {value!r}: unknown stage {key!r}; choose from {', '.join(STAGES)}")
        if not re.fullmatch(r"(\d+-)?\d+(:\d{1,2}){0,2}", when):
            raise SubmitError(f"--time {value!r}: expected [STAGE=]HH:MM:SS")
        if key == stage or (not key and found is None):
            found = when
    return found


def _wall_times(args: argparse.Namespace, scripts: dict[str, Path], cfg,
                sizes: dict[str, Size] | None = None) -> dict[str, tuple[list[str], str]]:
    """Per stage: (the scheduler's wall-time arguments, the line the job logs about its plan). The
    plan's limit (hpcmorph.plan.limit_seconds) unless the user gave a time."""
    from . import plan as planning

    if sizes:
        ranks = {stage: sizes[stage].nodes * sizes[stage].ppn for stage in scripts}
    else:
        ranks = {stage: _script_ranks(args, stage, script) for stage, script in scripts.items()}
    gpu = args.gpus_per_task != 0
    devices = {stage: "cuda" if stage in GPU_JOB_STAGES and gpu else "cpu" for stage in scripts}
    try:
        made = planning.make(cfg, ranks, "cuda" if "cuda" in devices.values() else "cpu", stages=list(scripts),
                             devices=devices)
        stages = {s.stage: s for s in made.stages}
    except UserError as err:
        if len(args.time) == 0 or any("=" in t for t in args.time):
            raise SubmitError(f"cannot plan the wall times ({err}); give them with --time") from None
        stages = {}
    out = {}
    for stage in scripts:
        user = _user_time(args, stage)
        planned = stages.get(stage)
        said = "no plan" if planned is None else (
            f"{ranks[stage]} rank(s) {planned.device}, predicted {planning.hms(planned.seconds)}"
            + (f" (expected {planning.hms(planned.expected_seconds)})" if planned.expected_seconds < planned.seconds
               else "") + (" from calibrated figures" if planned.calibrated else " from assumed figures"))
        if user is not None:
            time_args = [] if user.startswith("-") or "walltime=" in user else (
                [f"--time={user}"] if args.scheduler == "slurm" else ["-l", f"walltime={user}"])
            out[stage] = (time_args, f"{said}; limit {user.split('=')[-1]} (given by the user)")
            continue
        limit = planning.hms(planning.limit_seconds(planned))
        time_args = [f"--time={limit}"] if args.scheduler == "slurm" else ["-l", f"walltime={limit}"]
        out[stage] = (time_args, f"{said}; limit {limit} ({planning.margin_text(planned)})")
    return out


def _job_id(scheduler: str, stdout: str) -> str:
    text = stdout.strip().splitlines()[-1].strip() if stdout.strip() else ""
    if scheduler == "slurm":
        text = text.split(";")[0]  # --parsable: "id" or "id;cluster"
        if not text.isdigit():
            raise SubmitError(f"sbatch printed no job id: {stdout.strip()!r}")
    elif not text:
        raise SubmitError("qsub printed no job id")
    return text


def run(args: argparse.Namespace) -> int:
    try:
        from . import config as config_mod

        try:
            cfg = config_mod.load(args.config, args.overrides)
        except config_mod.ConfigError as err:
            raise SubmitError(str(err)) from None
        subs = plan(args, cfg)
        program = SCHEDULERS[args.scheduler][0]
        if args.dry_run:
            site = sites.get(args.site)
            for note in site.notes:
                print(f"# {site.name}: {note}")
            for i, sub in enumerate(subs):
                if sub.text is None:
                    print(f"# {sub.stage}: {sub.script}")
                else:
                    print(f"# {sub.stage}: {sub.script} with the {site.name} block, written to {sub.written}")
                    print(sub.text, end="")
                    print(f"# {sub.stage}: submitted with")
                print(sub.shell().replace("{prev}", f"<job id of {subs[i - 1].stage}>" if i else ""))
            return 0
        if shutil.which(program) is None:
            raise SubmitError(f"{program} not found on PATH: is the {args.scheduler} client loaded? "
                              "(--dry-run prints the commands without submitting)")
        for sub in subs:
            if sub.written is not None:
                try:
                    sub.written.parent.mkdir(parents=True, exist_ok=True)
                    sub.written.write_text(sub.text)
                except OSError as err:
                    raise SubmitError(f"cannot write the job script {sub.written}: {err.strerror}") from None
        prev, submitted = None, []
        for sub in subs:
            argv = [a.replace("{prev}", prev or "") for a in sub.argv]
            try:
                res = subprocess.run(argv, env={**os.environ, **sub.env}, capture_output=True, text=True,
                                     timeout=120)
            except subprocess.TimeoutExpired:
                raise SubmitError(f"{program} did not answer within 120 s submitting {sub.stage}") from None
            if res.returncode != 0:
                done = f" (already submitted: {', '.join(submitted)})" if submitted else ""
                raise SubmitError(f"{program} exited {res.returncode} submitting {sub.stage}{done}: "
                                  f"{res.stderr.strip() or res.stdout.strip()}")
            prev = _job_id(args.scheduler, res.stdout)
            submitted.append(f"{sub.stage} {prev}")
            print(f"{sub.stage} {prev}", flush=True)
        return 0
    except (SubmitError, sites.SiteError) as err:
        print(f"hpcmorph: error: submit: {err}", file=sys.stderr)
        return 2
