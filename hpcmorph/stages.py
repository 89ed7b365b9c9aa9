"""The table of stages: the one list the pipeline, the command line and ``submit`` read.

Every stage is a package under ``hpcmorph/`` with the same narrow entry::

    run(cfg: Config, ctx: mpi.Context, force: bool = False) -> Path   # its main output

``run`` returns at once when the stage's complete output for this config is already there (a digest
of the settings it depends on), resumes from its checkpoints otherwise, refuses (a
:class:`~hpcmorph.errors.StoreError`) to replace an output made from another config, and with
``force`` redoes the stage, replacing its output. Data flows one way, in table order: a stage reads
only the outputs of the stages above it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from collections.abc import Callable

from .config import TRAIN_VARIANTS


@dataclass(frozen=True)
class Stage:
    """One stage: its name (the subcommand), its package, its help texts, and what the plan,
    ``submit`` and the benchmarks need to know of it."""

    name: str
    summary: str
    description: str
    # Runs on the rank's GPU when it has one (the plan counts it on that device); else on CPUs.
    gpu: bool
    # Its Slurm scripts ask for a GPU per task (--gpus-per-task=1, which submit's --gpus-per-task
    # replaces). Attack runs on a GPU when there is one but its scripts are sized by cores.
    gpu_job: bool
    # Ranks per node its scripts assume (PBS scripts' HPCMORPH_RANKS_PER_NODE default); on Slurm
    # used only with --nodes, to size --ntasks.
    ranks_per_node: int
    # Fixed seconds the plan assumes (one tiny run on the 2-core test machine): loading models and
    # data, the figures, the page. Per stage, or per model trained (train) and per k (attack).
    fixed_s: float
    # Parallel efficiency the plan assumes beyond one rank (the README's 2-rank benchmarks: generate
    # 0.94, attack 0.82, analyze 0.74; training's all-reduce is not measured beyond 2 ranks).
    efficiency: float
    # Its scripts stay on one node whatever --nodes says (a small stage).
    one_node: bool = False
    # One rank whatever --ranks-per-node says.
    serial: bool = False
    # ``hpcmorph bench`` has a benchmark of it (hpcmorph/bench/<name>.py).
    bench: bool = True

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"hpcmorph.{self.name}")

    @property
    def run(self) -> Callable[..., Path]:
        return self.module.run

    def configs(self, cfg) -> list:
        """The configs one pass of the stage runs: one, or (attack) one per pixel count k."""
        return getattr(self.module, "configs", lambda c: [c])(cfg)


STAGES = (
    Stage("generate", "draw Y10/Y1 LSST mock galaxies into one HDF5 file (MPI-parallel)",
          "Stage 1: draw parent galaxies (GalSim synthetic, external cutouts or observed arrays), observe "
          "them as LSST Y10 and Y1 in g, r, i, label them from Gini-M20, augment mergers, split 70/10/20, and "
          "write <run.root>/<run.name>/galaxies.h5 plus figures. Ranks share the galaxies; a killed run "
          "resumes where it stopped.",
          gpu=False, gpu_job=False, ranks_per_node=32, fixed_s=1.0, efficiency=0.9),
    Stage("train", "train the classifier (ResNet18 or a small CNN): plainly, domain-adapted or "
                   "adversarially (Horovod / DDP)",
          f"Stage 2: train each variant (train.variants: {', '.join(TRAIN_VARIANTS)}) and seed of the config "
          "on galaxies.h5, with early "
          "stopping, and evaluate on the Y10 and Y1 test sets (Table 1). Data-parallel under "
          "mpirun/srun/horovodrun/torchrun (train.backend). On SIGTERM or SIGUSR1 it checkpoints and exits "
          "75; the same command resumes.",
          gpu=True, gpu_job=True, ranks_per_node=4, fixed_s=2.0, efficiency=0.85),
    Stage("attack", "one-pixel attacks on the trained models (MPI-parallel)",
          "Stage 3: Su et al.'s one-pixel (or k-pixel) attack on each trained variant, on the same Y10 test "
          "images, targeted at each other class (or untargeted), by attack.method: de (differential "
          "evolution, batched over whole populations and several images), exhaustive, sparse-rs or saliency. "
          "Writes one attack*.h5 per model seed, method, mode, k and value range (attack.h5 for the "
          "defaults), each with a summary and figures. Ranks share the images; a killed run resumes where "
          "it stopped.",
          gpu=True, gpu_job=False, ranks_per_node=32, fixed_s=1.2, efficiency=0.85),
    Stage("analyze", "latents, Table 2 distances, church windows, isomaps, accuracy vs exposure (MPI-parallel)",
          "Stage 4: embed the Y10, Y1 and attacked test images in each model's 256-d latent space "
          "(batched, ranks share the images), and compute Table 1 over seeds, Table 2 (latent distances "
          "Y10->Y1 and Y10->attacked over the flipped images), church windows, isomaps, accuracy against "
          "exposure time and attack success against k. Writes <run.root>/<run.name>/analysis/.",
          gpu=True, gpu_job=True, ranks_per_node=4, fixed_s=4.5, efficiency=0.75, one_node=True),
    Stage("report", "assemble tables and figures into a self-contained HTML report",
          "Stage 5: gather every stage's numbers and figures into <run.root>/<run.name>/report/: index.html "
          "(self-contained), Tables 1 and 2 as Markdown and LaTeX, CSV/JSON of every number, figures as PNG "
          "and PDF, and the config and versions.",
          gpu=False, gpu_job=False, ranks_per_node=1, fixed_s=0.2, efficiency=1.0, one_node=True, serial=True,
          bench=False),
)

NAMES = tuple(s.name for s in STAGES)
# The table's columns as name lists, for the modules that ask "is this stage one of ...".
GPU_STAGES = tuple(s.name for s in STAGES if s.gpu)
GPU_JOB_STAGES = tuple(s.name for s in STAGES if s.gpu_job)
ONE_NODE = tuple(s.name for s in STAGES if s.one_node)
SERIAL = tuple(s.name for s in STAGES if s.serial)
BENCH_STAGES = tuple(s.name for s in STAGES if s.bench)


def stage(name: str) -> Stage:
    return STAGES[NAMES.index(name)]
