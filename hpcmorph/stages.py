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


@dataclass(frozen=True)
class Stage:
    """One stage: its name (the subcommand), its package, and its help texts."""

    name: str
    summary: str
    description: str

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
          "resumes where it stopped."),
    Stage("train", "train ResNet18, plainly and with MMD domain adaptation (Horovod / DDP)",
          "Stage 2: train each variant (regular, mmd) and seed of the config on galaxies.h5, with early "
          "stopping, and evaluate on the Y10 and Y1 test sets (Table 1). Data-parallel under "
          "mpirun/srun/horovodrun/torchrun (train.backend). On SIGTERM or SIGUSR1 it checkpoints and exits "
          "75; the same command resumes."),
    Stage("attack", "one-pixel attacks on the trained models (MPI-parallel)",
          "Stage 3: Su et al.'s one-pixel (or k-pixel) attack on each trained variant, on the same Y10 test "
          "images, targeted at each other class (or untargeted), batched over whole populations and several "
          "images; writes <run.root>/<run.name>/attack.h5, a summary and figures. Ranks share the images; a "
          "killed run resumes where it stopped."),
    Stage("analyze", "latents, Table 2 distances, church windows, isomaps, accuracy vs exposure (MPI-parallel)",
          "Stage 4: embed the Y10, Y1 and attacked test images in each model's 256-d latent space "
          "(batched, ranks share the images), and compute Table 1 over seeds, Table 2 (latent distances "
          "Y10->Y1 and Y10->attacked over the flipped images), church windows, isomaps, accuracy against "
          "exposure time and attack success against k. Writes <run.root>/<run.name>/analysis/."),
    Stage("report", "assemble tables and figures into a self-contained HTML report",
          "Stage 5: gather every stage's numbers and figures into <run.root>/<run.name>/report/: index.html "
          "(self-contained), Tables 1 and 2 as Markdown and LaTeX, CSV/JSON of every number, figures as PNG "
          "and PDF, and the config and versions."),
)

NAMES = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    return STAGES[NAMES.index(name)]
