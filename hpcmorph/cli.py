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
from .pipeline import STAGES

EPILOG = """Configs: a preset name (laptop, paper, tiny) or a YAML file (which may start with
`extends: laptop`). Override any field with --set section.key=value (YAML value syntax).
`hpcmorph config --config laptop` prints the resolved configuration with every default.

Exit codes: 0 done; 1 a rank failed (traceback shown, every rank stopped);
2 bad config or input (message names the field or file); 75 train (or run) stopped by
SIGTERM/SIGUSR1 after writing its checkpoint: the same command resumes."""


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="laptop", metavar="PRESET|YAML",
                   help="preset name (laptop, paper, tiny) or YAML file (default: laptop)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set generate.n_galaxies=500 (repeatable)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _stage_parser(sub, name: str, help: str, description: str,
                  force: str | None = "replace an output made from a different config") -> argparse.ArgumentParser:
    """A subcommand that runs on a config: --config/--set/--verbose, and --force where ``force`` says."""
    p = sub.add_parser(name, help=help, description=description, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _config_args(p)
    if force:
        p.add_argument("--force", action="store_true", help=force)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcmorph", description="Galaxy-morphology robustness study as HPC batch stages "
        "(LSST Y10/Y1 mocks, ResNet18 with MMD domain adaptation, one-pixel attacks).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hpcmorph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _stage_parser(sub, "generate", "draw Y10/Y1 LSST mock galaxies into one HDF5 file (MPI-parallel)",
                      "Stage 1: draw parent galaxies (GalSim synthetic, external cutouts or observed "
                      "arrays), observe them as LSST Y10 and Y1 in g, r, i, label them from Gini-M20, augment "
                      "mergers, split 70/10/20, and write <run.root>/<run.name>/galaxies.h5 plus figures. "
                      "Ranks share the galaxies; a killed run resumes where it stopped.")

    _stage_parser(sub, "train", "train ResNet18, plainly and with MMD domain adaptation (Horovod / DDP)",
                      "Stage 2: train each variant (regular, mmd) and seed of the config on "
                      "galaxies.h5, with early stopping, and evaluate on the Y10 and Y1 test sets (Table 1). "
                      "Data-parallel under mpirun/srun/horovodrun/torchrun (train.backend). On SIGTERM or SIGUSR1 "
                      "it checkpoints and exits 75; the same command resumes.",
                      force=None)

    _stage_parser(sub, "attack", "one-pixel attacks on the trained models by batched differential evolution (MPI-parallel)",
                      "Stage 3: Su et al.'s one-pixel (or k-pixel) attack on each trained variant, on the "
                      "same Y10 test images, targeted at each other class (or untargeted), by differential evolution "
                      "batched over whole populations and several images; writes <run.root>/<run.name>/attack.h5, a "
                      "summary and figures. Ranks share the images; a killed run resumes where it stopped.")

    _stage_parser(sub, "analyze", "latents, Table 2 distances, church windows, isomaps, accuracy vs exposure (MPI-parallel)",
                      "Stage 4: embed the Y10, Y1 and attacked test images in each model's 256-d latent "
                      "space (batched, ranks share the images), and compute Table 1 over seeds, Table 2 (latent "
                      "distances Y10->Y1 and Y10->attacked over the flipped images), church windows, isomaps, "
                      "accuracy against exposure time and attack success against k. Writes "
                      "<run.root>/<run.name>/analysis/.")

    _stage_parser(sub, "report", "assemble tables and figures into a self-contained HTML report",
                      "Stage 5: gather every stage's numbers and figures into "
                      "<run.root>/<run.name>/report/: index.html (self-contained), Tables 1 and 2 as Markdown and "
                      "LaTeX, CSV/JSON of every number, figures as PNG and PDF, and the config and versions.",
                      force=None)

    p = _stage_parser(sub, "run", "every stage in order (generate, train, attack, analyze, report), skipping done ones",
                      "Runs generate, train, attack (once per k in analyze.k_sweep), analyze and report "
                      "in order. A stage whose complete output exists for the same config (by a hash of the "
                      "settings it depends on) is skipped, so a rerun after a crash continues where it stopped. "
                      "Works serially or under an MPI launcher (every rank runs every stage).",
                      force="redo every stage, replacing its output (also one made from a different config)")
    p.add_argument("--until", choices=STAGES, default="report",
                   help="stop after this stage (default: report)")

    p = sub.add_parser("submit", help="submit the stages as a Slurm or PBS job chain (afterok dependencies)")
    from .submit import add_arguments as _submit_args
    _submit_args(p)

    p = sub.add_parser("plan", help="each stage's work, assumed throughput, predicted wall time and node/GPU-hours")
    from .plan import add_arguments as _plan_args
    _plan_args(p)

    p = sub.add_parser("info", help="versions, MPI library, h5py MPI support, GPUs")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("config", help="print the resolved configuration (validated)")
    _config_args(p)

    p = sub.add_parser("bench", help="benchmarks: a stage's throughput beside a bare baseline",
                       description="Prints the stage's figure beside a bare baseline measured in the same run.")
    p.add_argument("stage", choices=["generate", "train", "attack", "analyze"], help="which stage to benchmark")
    p.add_argument("--galaxies", type=int, default=128, help="galaxies per measurement (default 128)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts for the scaling run")
    return parser


def cmd_info(args) -> int:
    import sklearn  # noqa: F401 - imported so versions() reports them
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    from .store import h5py_has_mpi, versions

    info = versions()
    info["h5py_mpi"] = h5py_has_mpi()
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        return cmd_info(args)
    if args.command == "submit":
        from .submit import run as submit_run

        return submit_run(args)
    if args.command == "plan":
        from .plan import run as plan_run

        return plan_run(args)
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(args)

    from . import config as config_mod

    if args.command == "config":
        try:
            print(config_mod.load(args.config, args.overrides).to_yaml(), end="")
        except config_mod.ConfigError as err:
            print(f"hpcmorph: error: {err}", file=sys.stderr)
            return 2
        return 0

    from . import mpi
    from .errors import UserError

    ctx = mpi.world()
    mpi.setup_logging(ctx, args.verbose)
    with mpi.abort_on_error(ctx, user_errors=(UserError,)):
        cfg = config_mod.load(args.config, args.overrides)
        if args.command == "generate":
            from .generate import run

            run(cfg, ctx, force=args.force)
        elif args.command == "attack":
            from .attack import run

            run(cfg, ctx, force=args.force)
        elif args.command == "analyze":
            from .analyze import run

            run(cfg, ctx, force=args.force)
        elif args.command == "report":
            from .report import run

            run(cfg, ctx)
        elif args.command in ("train", "run"):
            from .errors import PREEMPTED_EXIT, Preempted

            try:
                if args.command == "train":
                    from .train import run

                    run(cfg)
                else:
                    from .pipeline import run

                    run(cfg, ctx, force=args.force, until=args.until)
            except Preempted as err:
                mpi.log.warning("%s", err)
                return PREEMPTED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
