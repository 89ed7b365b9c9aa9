"""A stage's plan: its terms (work at a throughput, or a fixed cost) and what they add up to, with
the stage facts (fixed cost, parallel efficiency) from the table of stages."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..stages import STAGES as STAGE_TABLE
from .figures import Rate

# Assumed per stage (the table says where from): fixed seconds, and parallel efficiency beyond one rank.
FIXED = {s.name: s.fixed_s for s in STAGE_TABLE}
EFFICIENCY = {s.name: s.efficiency for s in STAGE_TABLE}


@dataclass
class Term:
    """One part of a stage's time: ``work`` units per rank at ``rate`` (or fixed ``seconds``)."""

    what: str
    work: float
    rate: Rate | None
    seconds: float
    expected_seconds: float | None = None

    def as_dict(self) -> dict:
        d = {"what": self.what, "work_per_rank": self.work, "seconds": self.seconds}
        if self.expected_seconds is not None:
            d["expected_seconds"] = self.expected_seconds
        if self.rate is not None:
            d["rate"] = asdict(self.rate)
        return d


@dataclass
class StagePlan:
    stage: str
    ranks: int
    device: str
    gpus_per_rank: int
    work: dict
    terms: list[Term]
    notes: list[str] = field(default_factory=list)

    @property
    def efficiency(self) -> float:
        return 1.0 if self.ranks == 1 else EFFICIENCY[self.stage]

    @property
    def seconds(self) -> float:
        """Predicted wall time, at most (every attack runs its whole budget unless a curve says
        otherwise in ``expected_seconds``; training runs every epoch)."""
        fixed = sum(t.seconds for t in self.terms if t.rate is None)
        return fixed + sum(t.seconds for t in self.terms if t.rate is not None) / self.efficiency

    @property
    def expected_seconds(self) -> float:
        fixed = sum(t.seconds for t in self.terms if t.rate is None)
        varying = sum(t.seconds if t.expected_seconds is None else t.expected_seconds
                      for t in self.terms if t.rate is not None)
        return fixed + varying / self.efficiency

    @property
    def assumed(self) -> list[str]:
        out = [f"fixed {self.stage} cost"] + [f"{t.rate.name} ({t.rate.source})" for t in self.terms
                                              if t.rate is not None and t.rate.assumed]
        if self.ranks > 1:
            out.append(f"{self.stage} parallel efficiency {EFFICIENCY[self.stage]:.2f}")
        return out

    @property
    def calibrated(self) -> bool:
        """Whether every throughput of the stage was measured here (its fixed costs are assumed)."""
        rated = [t for t in self.terms if t.rate is not None]
        return bool(rated) and not any(t.rate.assumed for t in rated)

    def hours(self, ranks_per_node: int) -> dict:
        wall_h = self.seconds / 3600
        nodes = math.ceil(self.ranks / max(1, ranks_per_node))
        gpus = self.ranks * self.gpus_per_rank if self.device == "cuda" else 0
        return {"nodes": nodes, "node_hours": nodes * wall_h, "gpu_hours": gpus * wall_h,
                "rank_hours": self.ranks * wall_h}

    def as_dict(self, ranks_per_node: int) -> dict:
        return {"stage": self.stage, "ranks": self.ranks, "device": self.device, "gpus_per_rank": self.gpus_per_rank,
                "work": self.work, "predicted_seconds": self.seconds, "expected_seconds": self.expected_seconds,
                "parallel_efficiency": self.efficiency, **self.hours(ranks_per_node),
                "terms": [t.as_dict() for t in self.terms], "assumed": self.assumed, "notes": self.notes}


def _term(what: str, work: float, rate: Rate, expected_work: float | None = None) -> Term:
    return Term(what, work, rate, work / rate.per_s,
                None if expected_work is None else expected_work / rate.per_s)
