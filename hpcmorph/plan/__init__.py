"""``hpcmorph plan``: the work of every stage, the throughput it assumes, the wall time it predicts.

    hpcmorph plan --config paper --ranks 8 --device cuda
    hpcmorph plan --config laptop --calibrate            # measure the figures on this machine first
    hpcmorph plan --config tiny --json

For each stage the work is counted as the stage does it (from ``galaxies.h5`` and the attack outputs
when they exist under ``<run.root>/<run.name>/``, else estimated from the config):

- generate: parent galaxies, drawn in blocks of ``generate.block_size`` dealt round-robin to the
  ranks; the rows written after merger augmentation;
- train: per variant and seed, at most ``train.epochs`` epochs (early stopping may end it sooner)
  of the rank's shard of the training rows (MMD: and as many Y1 images), a validation pass per
  epoch and the Y10 and Y1 test sets;
- attack (once per k: ``attack.pixels`` then the rest of ``analyze.k_sweep``; with ``attack.certify``
  the k = 1 attacks' certifying scan too, at most every image x H x W x 2^bands): at most images x
  targets x population x (generations + 1) model queries per model, in blocks of
  ``attack.images_per_batch`` images dealt round-robin; the expected queries from the
  success-against-queries curve of an existing attack output of the run, where one exists;
- analyze: latents of the Y10 and Y1 test images and the attacked images, the test images observed
  again at every exposure fraction and classified;
- report: a fixed cost.

Each term is work / (per-rank throughput x ranks sharing it); a figure is either measured here by
``--calibrate`` (``hpcmorph/calibrate.py``, stored as ``calibration-<device>.json`` under the run)
or taken from :data:`ASSUMED`, a stated table per device type, and every line says which. Several
ranks are assumed to scale with the stated efficiencies of :data:`EFFICIENCY` (assumed too).

``hpcmorph submit`` asks for :func:`limit_seconds` of each job's predicted time as its wall time.

The package: ``figures`` (the throughputs, measured or assumed), ``data`` (the rows of galaxies.h5),
``terms`` (a stage's plan and its terms, with the stage facts of :mod:`hpcmorph.stages`), ``work``
(each stage's work), ``model`` (the whole run's plan and the wall-time limit) and ``cli``.
"""

from __future__ import annotations

from ..stages import GPU_STAGES
from ..stages import NAMES as STAGES
from .cli import add_arguments, format_plan, hms, run
from .data import Dataset, count_parents, dataset
from .figures import ASSUMED, DEVICES, Figures, PlanError, Rate
from .model import MARGIN, MARGIN_FIXED_S, ROUND_S, Plan, limit_seconds, make, margin_text
from .terms import EFFICIENCY, FIXED, StagePlan, Term
from .work import plan_analyze, plan_attack, plan_generate, plan_report, plan_train, query_curve

__all__ = ["ASSUMED", "DEVICES", "EFFICIENCY", "FIXED", "GPU_STAGES", "MARGIN", "MARGIN_FIXED_S", "ROUND_S",
           "STAGES", "Dataset", "Figures", "Plan", "PlanError", "Rate", "StagePlan", "Term", "add_arguments",
           "count_parents", "dataset", "format_plan", "hms", "limit_seconds", "make", "margin_text", "plan_analyze",
           "plan_attack", "plan_generate", "plan_report", "plan_train", "query_curve", "run"]
