"""``hpcmorph run``: every stage in order, each skipped when its complete output is already current.

Data flow is one way (config -> generate -> train -> attack -> analyze -> report) and every stage
recognises its own finished output by a hash of the settings it depends on, so this driver only
calls them in turn: a rerun after a crash redoes nothing that finished, and a stage that was killed
resumes from its own checkpoints. The wall time of each stage that ran is appended to
``<run.root>/<run.name>/timings.json`` (the report shows it).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .config import Config
from .mpi import Context, log

STAGES = ("generate", "train", "attack", "analyze", "report")


def attack_configs(cfg: Config) -> list[Config]:
    """One config per attack to run: k = attack.pixels first, then the other k of analyze.k_sweep."""
    ks = list(dict.fromkeys([cfg.attack.pixels, *cfg.analyze.k_sweep]))
    return [cfg if k == cfg.attack.pixels else cfg.updated({"attack.pixels": k}) for k in ks]


def _record(cfg: Config, stage: str, seconds: float, ranks: int) -> None:
    path = Path(cfg.run.root) / cfg.run.name / "timings.json"
    try:
        timings = json.loads(path.read_text())
    except (OSError, ValueError):
        timings = []
    timings.append({"stage": stage, "seconds": round(seconds, 2), "ranks": ranks,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(timings, indent=2))
    os.replace(tmp, path)


def run(cfg: Config, ctx: Context, force: bool = False, until: str = "report") -> None:
    """Run the stages from generate through ``until``."""
    from . import analyze, attack, generate, report, train

    steps = {
        "generate": lambda: generate.run(cfg, ctx, force=force),
        "train": lambda: train.run(cfg),
        "attack": lambda: [attack.run(c, ctx, force=force) for c in attack_configs(cfg)],
        "analyze": lambda: analyze.run(cfg, ctx, force=force),
        "report": lambda: report.run(cfg, ctx),
    }
    for stage in STAGES[:STAGES.index(until) + 1]:
        log.info("run: stage %s", stage)
        ctx.barrier()
        t0 = time.perf_counter()
        steps[stage]()
        ctx.barrier()
        seconds = time.perf_counter() - t0
        log.info("run: stage %s took %.1f s", stage, seconds)
        if ctx.is_root:
            _record(cfg, stage, seconds, ctx.size)
