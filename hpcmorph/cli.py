"""The ``hpcmorph`` command: one subcommand per stage, plus ``info``, ``config`` and ``bench``.

Every stage command runs the same way serially or under an MPI launcher::

    hpcmorph generate --config laptop
    mpirun -n 4 hpcmorph generate --config laptop --set generate.n_galaxies=2000
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .config import PRESETS
from .errors import USER_ERROR_EXIT, UserError
from .bench import STAGES as BENCH_STAGES
from .stages import NAMES, STAGES, stage

EPILOG = f"""Configs: a preset name ({", ".join(PRESETS)}) or a YAML file (which may start with
`extends: laptop`). Override any field with --set section.key=value (YAML value syntax).
`hpcmorph config --config laptop` prints the resolved configuration with every default.

Exit codes: 0 done; 1 a rank failed (traceback shown, every rank stopped);
2 bad config or input (message names the field or file); 75 train (or run) stopped by
SIGTERM/SIGUSR1 after writing its checkpoint (or with nothing left to do): the same command resumes.
Every stage command (and run) takes --force: redo it, replacing its output."""


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="laptop", metavar="PRESET|YAML",
                   help=f"preset name ({', '.join(PRESETS)}) or YAML file (default: laptop)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set generate.n_galaxies=500 (repeatable)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _stage_parser(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand that runs on a config: --config/--set/--verbose and --force."""
    p = sub.add_parser(name, help=help, description=description, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _config_args(p)
    p.add_argument("--force", action="store_true",
                   help="redo the stage, replacing its output (also one made from a different config)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcmorph", description="Galaxy-morphology robustness study as HPC batch stages "
        "(LSST Y10/Y1 mocks, ResNet18 with MMD domain adaptation, one-pixel attacks).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hpcmorph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for s in STAGES:
        p = _stage_parser(sub, s.name, s.summary, s.description)
        if s.name == "attack":
            p.add_argument("--list-k", action="store_true",
                           help="print the pixel counts k one pass of the stage attacks with (attack.pixels, then "
                           "the rest of analyze.k_sweep; space-separated, one per attack output) and exit: what "
                           "the attack job scripts run in turn, each as --set attack.pixels=K")

    p = _stage_parser(sub, "run", "every stage in order (generate, train, attack, analyze, report), skipping done ones",
                      "Runs generate, train, attack (once per k in analyze.k_sweep), analyze and report "
                      "in order. A stage whose complete output exists for the same config (by a hash of the "
                      "settings it depends on) is skipped, so a rerun after a crash continues where it stopped. "
                      "Works serially or under an MPI launcher (every rank runs every stage). "
                      "--force redoes every stage.")
    p.add_argument("--until", choices=NAMES, default="report", help="stop after this stage (default: report)")

    p = sub.add_parser("submit", help="submit the stages as a Slurm or PBS job chain (afterok dependencies)")
    from .submit import add_arguments as _submit_args
    _submit_args(p)

    p = sub.add_parser("plan", help="each stage's work, assumed throughput, predicted wall time and node/GPU-hours")
    from .plan import add_arguments as _plan_args
    _plan_args(p)

    p = sub.add_parser("info", help="versions, MPI library (and the file it was loaded from), h5py MPI support, GPUs")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("config", help="print the resolved configuration (validated)")
    _config_args(p)

    p = sub.add_parser("bench", help="benchmarks: a stage's throughput beside a bare baseline",
                       description="Prints the stage's figure beside a bare baseline measured in the same run.")
    p.add_argument("stage", choices=BENCH_STAGES, help="which stage to benchmark")
    p.add_argument("--galaxies", type=int, default=128, help="galaxies per measurement (default 128)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts for the scaling run")
    return parser


def cmd_info(args) -> int:
    import sklearn  # noqa: F401 - imported so versions() reports them
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    from .store import h5py_has_mpi, versions

    from .mpi import library_files

    info = versions()
    info["h5py_mpi"] = h5py_has_mpi()
    # The file the MPI library was loaded from: the image's own, or a site's in its place.
    info["mpi_library"] = ", ".join(library_files()) or "unknown"
    try:
        import torch

        info["gpus"] = torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        info["gpus"] = 0
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def cmd_config(args) -> int:
    from .config import load

    print(load(args.config, args.overrides).to_yaml(), end="")
    return 0


def cmd_submit(args) -> int:
    from .submit import run

    return run(args)


def cmd_plan(args) -> int:
    from .plan import run

    return run(args)


def cmd_bench(args) -> int:
    from .bench import main

    return main(args)


def cmd_list_k(args) -> int:
    """``hpcmorph attack --list-k``: the k of every attack one pass makes, in order; no MPI."""
    from . import attack
    from .config import load

    cfg = load(args.config, args.overrides)
    print(" ".join(str(c.attack.pixels) for c in attack.configs(cfg)))
    return 0


def cmd_stage(args) -> int:
    """A stage (or ``run``: every stage) on the config, on every rank of the job."""
    from . import mpi
    from .config import load
    from .errors import PREEMPTED_EXIT, Preempted, UserError

    ctx = mpi.world()
    mpi.setup_logging(ctx, args.verbose)
    mpi.log_placement(ctx)
    with mpi.abort_on_error(ctx, user_errors=(UserError,)):
        cfg = load(args.config, args.overrides)
        try:
            if args.command == "run":
                from .pipeline import run

                run(cfg, ctx, force=args.force, until=args.until)
            else:
                stage(args.command).run(cfg, ctx, force=args.force)
        except Preempted as err:
            mpi.log.warning("%s", err)
            return PREEMPTED_EXIT
    return 0


COMMANDS = {"info": cmd_info, "config": cmd_config, "submit": cmd_submit, "plan": cmd_plan, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "list_k", False):
            return cmd_list_k(args)
        return COMMANDS.get(args.command, cmd_stage)(args)
    except UserError as err:  # the commands that run without MPI (config, submit, bench's own checks)
        print(f"hpcmorph: error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
