"""``hpcmorph run``: every stage in order, each skipped when its complete output is already current.

Data flow is one way (config -> generate -> train -> attack -> analyze -> report) and every stage
recognises its own finished output by a hash of the settings it depends on, so this driver only
calls them in turn (:data:`hpcmorph.stages.STAGES`): a rerun after a crash redoes nothing that
finished, and a stage that was killed resumes from its own checkpoints. The wall time of each stage
that ran is appended to ``<run.root>/<run.name>/timings.json`` (the report shows it).
"""

from __future__ import annotations

import time
from pathlib import Path

from . import store
from .config import Config
from .errors import StoreError
from .layout import RunLayout
from .mpi import Context, log
from .stages import NAMES, STAGES


def _record(cfg: Config, stage: str, seconds: float, ranks: int) -> None:
    path = RunLayout.of(cfg).timings
    try:
        timings = store.read_json(path, kind=list)
    except StoreError:
        timings = []
    timings.append({"stage": stage, "seconds": round(seconds, 2), "ranks": ranks,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    store.write_json(path, timings)


def run(cfg: Config, ctx: Context, force: bool = False, until: str = "report") -> Path:
    """Run the stages from generate through ``until``; returns the last one's output."""
    out = RunLayout.of(cfg).folder
    for stage in STAGES[:NAMES.index(until) + 1]:
        log.info("run: stage %s", stage.name)
        ctx.barrier()
        t0 = time.perf_counter()
        for c in stage.configs(cfg):
            out = stage.run(c, ctx, force=force)
        ctx.barrier()
        seconds = time.perf_counter() - t0
        log.info("run: stage %s took %.1f s", stage.name, seconds)
        if ctx.is_root:
            _record(cfg, stage.name, seconds, ctx.size)
    return out
