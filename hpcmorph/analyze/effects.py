"""What each way of training buys against a baseline: robustness, and its price on Y1.

Two baselines: ``regular`` (plain training, the paper's), and ``mmd`` (the paper's domain-adapted model), so
that a variant which beats regular training can also be asked whether it beats what the paper already had.

Two paired differences per variant, each over images of the same seed, pooled over the analysed seeds:

- **robustness**: the one-pixel flip rate of the variant minus the baseline's, over the images both
  models were attacked on (the attack stage gives every attacked model the same images), in the
  run's own value range and pixel count (``attack.pixels``). An image counts as flipped when the
  attack reached any of its targets. Negative: the variant is harder to flip.
- **Y1 cost**: the variant's Y1 test accuracy minus the baseline's, over the whole labelled test
  split (the same images for both; each image scores 1 when its Y1 observation is classified as its
  class, else 0). Negative: the variant pays for its robustness on the one-year images.

Each is the mean of the per-image differences with a 95 % percentile-bootstrap interval that resamples
seeds, then images within a seed (:func:`.stats.bootstrap_ci` given one array per seed), so the
spread between trained models is kept. Pairing removes what both models share (an image that is easy
to flip for every model), which a difference of two independent fractions would leave in the
interval. The verdict reads the interval alone: "lower" or "higher" when it excludes 0, else "no
clear difference".
"""

from __future__ import annotations

import numpy as np

from .inputs import AttackRows
from .stats import bootstrap_ci, stream_of

BASELINE = "regular"
ADAPTED = "mmd"


def flipped_per_image(attacks: AttackRows, variants: list[str]) -> dict[str, dict[int, bool]]:
    """{variant: {galaxy row of an attacked image: whether any of its attacks succeeded}}."""
    out = {}
    for i, v in enumerate(variants):
        mine = attacks.variant == i
        rows, success = attacks.index[mine], attacks.success[mine]
        out[v] = {int(r): bool(success[rows == r].any()) for r in np.unique(rows)}
    return out


def evidence(attacks: AttackRows, variants: list[str], y1_correct: dict[str, np.ndarray]) -> dict:
    """One seed's per-image evidence: {"flipped": flipped_per_image, "y1_correct": {variant: (n,) bool
    over the labelled test split, rows increasing}}. ``y1_correct`` may name variants not attacked."""
    return {"flipped": flipped_per_image(attacks, variants),
            "y1_correct": {v: np.asarray(c, bool) for v, c in y1_correct.items()}}


def _verdict(e, lower: str, higher: str) -> str:
    if not e.has_ci:
        return "no interval"
    return lower if e.hi < 0 else higher if e.lo > 0 else "no clear difference"


def against_baseline(per_seed: list[dict], seed: int = 0, baseline: str = BASELINE, skip: tuple[str, ...] = ()) -> dict:
    """analysis.json's ``effects`` (``effects_mmd`` with ``baseline="mmd"``): {"baseline", "level", "variants":
    {variant: {"flip_rate", "y1_accuracy" (each an :class:`~.stats.Estimate` as JSON, or None when a seed lacks
    the pieces), "robustness", "y1_cost" (verdicts)}}} for every variant but the baseline and ``skip``; {} when
    a seed has no baseline."""
    if not per_seed or any(baseline not in e["y1_correct"] for e in per_seed):
        return {}
    names = list(dict.fromkeys(v for e in per_seed for v in e["y1_correct"] if v != baseline and v not in skip))
    rows = {}
    for v in names:
        flip = y1 = None
        if all(v in e["flipped"] and baseline in e["flipped"] for e in per_seed):
            diffs = []
            for e in per_seed:
                mine, base = e["flipped"][v], e["flipped"][baseline]
                both = sorted(set(mine) & set(base))
                diffs.append(np.array([float(mine[r]) - float(base[r]) for r in both]))
            flip = bootstrap_ci(diffs, seed=seed, stream=stream_of("effects", v, "flip"))
        if all(v in e["y1_correct"] for e in per_seed):
            diffs = [e["y1_correct"][v].astype(float) - e["y1_correct"][baseline].astype(float) for e in per_seed]
            y1 = bootstrap_ci(diffs, seed=seed, stream=stream_of("effects", v, "y1"))
        rows[v] = {"flip_rate": None if flip is None else flip.to_json(),
                   "y1_accuracy": None if y1 is None else y1.to_json(),
                   "robustness": None if flip is None else _verdict(flip, "harder to flip", "easier to flip"),
                   "y1_cost": None if y1 is None else _verdict(y1, "lower Y1 accuracy", "higher Y1 accuracy")}
    return {"baseline": baseline, "level": 0.95, "variants": rows}
