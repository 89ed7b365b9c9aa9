"""Benchmarks: each stage's figure beside a bare baseline (or ground truth) measured in the same run.

``hpcmorph bench STAGE`` runs ``hpcmorph.bench.<stage>.main``; one module per stage, shared helpers
(launching a stage under ``mpirun``, the tiny trained model) in :mod:`hpcmorph.bench.common`. The
benchmarks live apart from the stages: a stage never imports them.
"""

from __future__ import annotations

import importlib

from ..stages import BENCH_STAGES

STAGES = BENCH_STAGES  # the stages with a module here (hpcmorph.stages.Stage.bench)


def main(args) -> int:
    return importlib.import_module(f"hpcmorph.bench.{args.stage}").main(args)
