"""The plan of a whole run (:func:`make`) and the wall time ``hpcmorph submit`` asks for a job
(:func:`limit_seconds`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..stages import GPU_STAGES
from ..stages import NAMES as STAGES
from .data import Dataset, dataset
from .figures import DEVICES, Figures, PlanError
from .terms import StagePlan
from .work import plan_analyze, plan_attack, plan_generate, plan_report, plan_train

# The wall time asked for a job: factor x predicted + fixed, rounded up to ROUND seconds. The
# factor is larger when any figure of the stage is assumed rather than measured here.
MARGIN = {"calibrated": 1.5, "assumed": 3.0}
MARGIN_FIXED_S = 600
ROUND_S = 300


@dataclass
class Plan:
    config: str
    device: str
    gpus_per_rank: int
    ranks_per_node: int
    calibration: dict | None
    dataset: Dataset
    stages: list[StagePlan]

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def assumed(self) -> list[str]:
        return list(dict.fromkeys(a for s in self.stages for a in s.assumed))

    def as_dict(self) -> dict:
        cal = None if not self.calibration else {k: self.calibration.get(k) for k in
                                                 ("host", "date", "device", "device_name", "path")}
        return {"config": self.config, "device": self.device, "gpus_per_rank": self.gpus_per_rank,
                "ranks_per_node": self.ranks_per_node, "calibration": cal, "dataset": asdict(self.dataset),
                "stages": [s.as_dict(self.ranks_per_node) for s in self.stages],
                "predicted_seconds": self.seconds, "assumed": self.assumed(),
                "margin": {"calibrated_factor": MARGIN["calibrated"], "assumed_factor": MARGIN["assumed"],
                           "plus_seconds": MARGIN_FIXED_S, "rounded_to_seconds": ROUND_S}}


def make(cfg, ranks: int | dict = 1, device: str = "cpu", gpus_per_rank: int = 1, ranks_per_node: int | None = None,
         calibration: dict | None = None, stages=STAGES, devices: dict | None = None) -> Plan:
    """The plan of ``stages`` for ``cfg``: ``ranks`` for every stage but report (one rank), or a
    dict per stage; GPU stages on ``device`` (or ``devices[stage]``), the others on CPUs."""
    if device not in DEVICES:
        raise PlanError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    from .. import calibrate

    if calibration is None:
        calibration = calibrate.load(cfg, device)
    per_stage = ranks if isinstance(ranks, dict) else {s: ranks for s in STAGES}
    for stage, n in per_stage.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise PlanError(f"ranks for {stage} must be a positive integer, got {n!r}")
    figures = {device: Figures(cfg, device, calibration)}
    data = dataset(cfg)
    out = []
    for stage in stages:
        dev = (devices or {}).get(stage, device if stage in GPU_STAGES else "cpu")
        if dev not in figures:
            figures[dev] = Figures(cfg, dev, calibrate.load(cfg, dev))
        stage_figures = figures[dev]
        n = per_stage.get(stage, 1)
        if stage == "generate":
            out.append(plan_generate(cfg, n, stage_figures, data))
        elif stage == "train":
            out.append(plan_train(cfg, n, dev, gpus_per_rank, stage_figures, data))
        elif stage == "attack":
            out.append(plan_attack(cfg, n, dev, gpus_per_rank, stage_figures, data))
        elif stage == "analyze":
            out.append(plan_analyze(cfg, n, dev, gpus_per_rank, stage_figures, data))
        elif stage == "report":
            out.append(plan_report(cfg))
    rpn = ranks_per_node or (4 if device == "cuda" else 32)
    return Plan(cfg.name, device, gpus_per_rank, rpn, calibration, data, out)


def limit_seconds(stage: StagePlan) -> int:
    """The wall time to ask for: factor x predicted + MARGIN_FIXED_S, rounded up to ROUND_S; the
    attack's expected time where a query curve or a certified output gave one (a resumable job
    requeues at its limit)."""
    predicted = stage.expected_seconds if stage.stage == "attack" else stage.seconds
    factor = MARGIN["calibrated" if stage.calibrated else "assumed"]
    return int(math.ceil((factor * predicted + MARGIN_FIXED_S) / ROUND_S) * ROUND_S)


def margin_text(stage: StagePlan | None = None) -> str:
    """How the limit follows from the prediction: for ``stage``, or in general."""
    if stage is not None:
        factor = f"{MARGIN['calibrated' if stage.calibrated else 'assumed']:g} x"
    else:
        factor = f"{MARGIN['calibrated']:g} x (with assumed figures {MARGIN['assumed']:g} x)"
    return f"{factor} predicted + {MARGIN_FIXED_S // 60} min, rounded up to {ROUND_S // 60} min"
