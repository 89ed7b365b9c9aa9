"""The paper's claims, each measured on this run with an interval and a verdict.

One row per claim of Ćiprijanović et al. (2021): the claim, the paper's number, ours with its
interval and n, and a verdict. Every claim is an *effect* with a *no-effect* value (0 for a
difference, 1 for a ratio, 0.5 for "most") and, where the paper gives one, the paper's value of the
same effect; all the paper's effects point up (direction +1). With the interval [lo, hi] at 95 %:

- ``reproduced``: the interval excludes no effect in the paper's direction (lo > no effect);
- ``not reproduced``: it does not, and it excludes the paper's value (hi < paper); for a claim
  whose paper value is qualitative (None), when it excludes every effect in the paper's direction
  (hi <= no effect);
- ``inconclusive``: the interval covers both no effect and the paper's value, or there is no
  interval (one seed, one image): it cannot tell them apart;
- ``not measured``: the run has no evidence for it (no [0, 1] attack, no flipped image); never guessed.

``paper_in_ci`` says in addition whether the paper's value lies inside our interval (a reproduced
direction can still have another size).

The claims, their effects and intervals (seed-level quantities get a t interval over training
seeds, which needs >= 2 seeds; image-level ones a bootstrap over images, resampling seeds first when
there are several; see ``stats.py``):

1. *Regular training loses accuracy from Y10 to Y1* (paper 0.72 -> 0.43). Effect: the regular
   model's Y10 minus Y1 test accuracy; per seed the same model on both test sets, so a paired
   t interval over seeds (one-sample t of the per-seed differences). Paper 0.29.
2. *MMD recovers part of it* (paper 0.43 -> 0.66 on Y1). Effect: MMD's minus regular's Y1 test
   accuracy; the models are trained separately, so Welch's t interval over the two sets of seeds.
   Paper 0.23.
3. *One pixel flips most correctly classified images* (paper 136 of 150, both models). Effect: the
   fraction of the attacked (correctly classified) images one pixel flips, per model and per pixel
   value range ("data", "[0, 1]"), one row each; no effect 0.5 ("most" = more than half); t interval
   over seeds of the per-seed fractions, clipped to [0, 1]. Paper 136/150 = 0.907. Where the run
   certified its k = 1 attacks (``attack.certify``: every image the search failed on scanned at
   every corner of every pixel), the fraction is the certified one (images the search flipped or a
   corner pixel flips), exact for corner pixels; the search's own fraction and its coverage
   (flipped / flippable) are beside it (``parts``). Without a certificate the search's fraction is a
   lower bound of unknown gap.
4. *MMD needs more queries per flip* (paper: "more iterations were needed", one example; no
   number). Effect: mean queries per flipped image, MMD / regular; bootstrap over each model's
   flipped images, resampled independently. No effect 1. The means are over the images each model
   flipped: a model that flips only the easy images looks cheap (selection), and an image not
   flipped within the budget counts nowhere (censoring); read it beside claim 3 and the
   success-against-budget curve. One row per value range with evidence (module docstring).
5. *In MMD's latent space Y1 and attacked images sit farther from Y10 than in the regular model's*
   (paper Table 2: 29.7 / 20.2 = 1.47 for Y1, 38.1 / 16.8 = 2.27 "~2.3x" for attacked). Effect: the
   ratio MMD / regular of the mean **scale-free** distance over the flipped images (each model's
   distances divided by its latent scale, ``distances.latent_scale``: raw distances compare the two
   latent spaces' sizes too); bootstrap as in 4; one row for Y1, one for attacked. The raw ratio is
   shown beside it (``parts``) when the evidence has raw distances. The paper's ratios are of raw
   distances, from attacks in [0, 1]. One row per value range, as claim 4.
6. *The Y1 images fall into another class region for the regular model only* (paper: church windows
   and isomaps, qualitative). Effect: the fraction of Y1 test images whose predicted class differs
   from the same galaxy's Y10 prediction, regular minus MMD; Welch's t interval over seeds.

The evidence (:func:`claims`' input) is plain numbers from the run's own files, built per trained
seed with :func:`add_seed` or by hand::

    {"configured_range": "data",            # optional: the value range of the per-image lists below
     "variants": {"regular": {...}, "mmd": {...}}}   # each:
    {"seeds": [0, 1, 2],                    # training seeds; every per-seed list follows this order
     "accuracy_y10": [0.83, 0.80, 0.85],    # per seed: test accuracy on Y10 (fraction)
     "accuracy_y1": [0.61, 0.39, 0.55],     # per seed: test accuracy on Y1
     "class_change_y1": [0.35, 0.52, 0.40], # per seed: fraction of Y1 test images predicted another
                                            #   class than their Y10 image
     "attacks": {"data": {"attacked": [24, 24, 24], "flipped": [14, 12, 16],   # per value range,
                          "flippable": [15, 12, 16]},  #   per seed: images attacked (k = 1), images
                 "[0, 1]": {...}},          #   flipped, and (optional, NaN: not certified) images
                                            #   one corner pixel can flip
     "queries_per_flip": [[...], ...],      # per seed: per flipped image, the queries of its cheapest
                                            #   successful attack (Table 2's choice)
     "distance_y10_y1": [[...], ...],       # per seed: scale-free latent distance Y10 - Y1 per
     "distance_y10_attacked": [[...], ...], #   flipped image, and Y10 - attacked (``distances``'
                                            #   per_image[variant][kind + "_scale_free"])
     "raw_distance_y10_y1": [[...], ...],   # optional: the raw distances, shown beside claim 5
     "raw_distance_y10_attacked": [[...], ...],
     "by_range": {"[0, 1]": {"queries_per_flip": [[...], ...], ...}}}  # optional: the same per-image
                                            #   lists for attacks in other value ranges (claims 4, 5)

Any key may be missing (its claims are then ``not measured``); a per-seed scalar may be NaN (that
seed is left out and the row says so); a per-image list may also be one flat array (images of one
seed, or pooled: then the bootstrap cannot see the seeds). A malformed evidence dict (lists of
different lengths than ``seeds``) is an :class:`EvidenceError`.

Output: :func:`claims` returns a list of row dicts, analysis.json's ``claims``::

    {"id": "3", "claim": str, "measure": str, "variant": str | None, "range": str | None,
     "paper_text": str, "paper_value": float | None, "no_effect": float, "unit": "seeds" | "images",
     "estimate": Estimate JSON | None ({"value", "lo", "hi", "n", "std", "level", "method"}),
     "parts": {label: Estimate JSON} (the numbers behind the effect), "verdict": str,
     "paper_in_ci": bool | None, "note": str}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping

import numpy as np

from .. import paper
from .distances import PAPER as PAPER_TABLE2
from .stats import LEVEL, N_BOOT, Estimate, bootstrap_ci, mean_std, ratio_ci, stream_of, t_ci, welch_ci

VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not measured")
RANGES = ("data", "[0, 1]")  # the value ranges claim 3 always has a row for (attack.stage.range_name)
MODELS = ("regular", "mmd")

# The paper's numbers the claims use (hpcmorph.paper): Table 1 accuracies, the flipped count, Table 2.
PAPER_ACCURACY = {v: {d: paper.TABLE1[v][d]["accuracy"] for d in ("y10", "y1")} for v in ("regular", "mmd")}
PAPER_FLIPPED = paper.FLIPPED


class EvidenceError(ValueError):
    """An evidence dict that does not follow the schema (a programming error of whoever built it)."""


@dataclass(frozen=True)
class Claim:
    """One claim: what it says, what measures it, the paper's value of that effect and no effect."""

    id: str
    claim: str
    measure: str
    paper_text: str
    paper_value: float | None
    no_effect: float
    unit: str
    direction: int = 1


def _ratio(kind: str) -> float:
    return PAPER_TABLE2["mmd"][kind]["mean"] / PAPER_TABLE2["regular"][kind]["mean"]


_acc = PAPER_ACCURACY
CLAIMS = {
    "1": Claim("1", "Regular training loses accuracy from Y10 to Y1.",
               "regular model: Y10 minus Y1 test accuracy (paired over seeds)",
               f"{_acc['regular']['y10']:.2f} -> {_acc['regular']['y1']:.2f}",
               round(_acc["regular"]["y10"] - _acc["regular"]["y1"], 6), 0.0, "seeds"),
    "2": Claim("2", "Domain adaptation (MMD) recovers part of it.",
               "Y1 test accuracy: MMD minus regular",
               f"{_acc['mmd']['y1']:.2f} vs {_acc['regular']['y1']:.2f}",
               round(_acc["mmd"]["y1"] - _acc["regular"]["y1"], 6), 0.0, "seeds"),
    "3": Claim("3", "One pixel flips most correctly classified images.",
               "fraction of the attacked images flipped (k = 1); no effect: one half",
               f"{PAPER_FLIPPED[0]} of {PAPER_FLIPPED[1]} (both models)", PAPER_FLIPPED[0] / PAPER_FLIPPED[1], 0.5,
               "seeds"),
    "4": Claim("4", "MMD needs more queries per flip than regular training.",
               "mean queries per flipped image, MMD / regular",
               "\"more iterations were needed\" (one example; no number)", None, 1.0, "images"),
    "5a": Claim("5a", "In MMD's latent space the Y1 images sit farther from Y10 than in the regular model's.",
                "mean scale-free latent distance Y10 - Y1 over the flipped images, MMD / regular",
                f"{PAPER_TABLE2['mmd']['y10_y1']['mean']} / {PAPER_TABLE2['regular']['y10_y1']['mean']} (raw)",
                _ratio("y10_y1"), 1.0, "images"),
    "5b": Claim("5b", "In MMD's latent space the attacked images sit farther from Y10 than in the regular "
                "model's (~2.3x).",
                "mean scale-free latent distance Y10 - attacked over the flipped images, MMD / regular",
                f"{PAPER_TABLE2['mmd']['y10_attacked']['mean']} / {PAPER_TABLE2['regular']['y10_attacked']['mean']}"
                " (raw; \"~2.3x further\")", _ratio("y10_attacked"), 1.0, "images"),
    "6": Claim("6", "The Y1 images fall into another class region for the regular model only.",
               "fraction of Y1 test images predicted another class than their Y10 image: regular minus MMD",
               "church windows and isomaps (qualitative)", None, 0.0, "seeds"),
}


# ------------------------------------------------------------------------------------------ verdict

def verdict(est: Estimate | None, no_effect: float, paper: float | None = None, direction: int = 1) -> str:
    """``reproduced``, ``not reproduced``, ``inconclusive`` or ``not measured`` (module docstring).

    est: our effect with its interval; no_effect: the effect's value when the claim is false; paper:
    the paper's value of it (None: qualitative); direction: +1 when the paper's effect is above
    ``no_effect``, -1 below.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, not {direction}")
    if est is None or not math.isfinite(est.value):
        return "not measured"
    if not est.has_ci:
        return "inconclusive"
    # In the paper's direction: flip the axis for a claim that the effect goes down.
    lo, hi = (est.lo, est.hi) if direction > 0 else (-est.hi, -est.lo)
    null = direction * no_effect
    if lo > null:
        return "reproduced"
    if (paper is None and hi <= null) or (paper is not None and hi < direction * paper):
        return "not reproduced"
    return "inconclusive"


def row(claim: Claim, est: Estimate | None, parts: Mapping[str, Estimate] | None = None, note: str = "",
        variant: str | None = None, value_range: str | None = None) -> dict:
    """A claims-table row (module docstring) for ``claim`` measured as ``est`` (None: not measured)."""
    v = verdict(est, claim.no_effect, claim.paper_value, claim.direction)
    in_ci = None
    if est is not None and est.has_ci and claim.paper_value is not None:
        in_ci = est.covers(claim.paper_value)
    if v == "inconclusive" and est is not None and not est.has_ci and not note:
        note = "no interval: too few values"
    return {"id": claim.id, "claim": claim.claim, "measure": claim.measure, "variant": variant, "range": value_range,
            "paper_text": claim.paper_text, "paper_value": claim.paper_value, "no_effect": claim.no_effect,
            "unit": claim.unit, "estimate": None if est is None or not math.isfinite(est.value) else est.to_json(),
            "parts": {k: e.to_json() for k, e in (parts or {}).items()}, "verdict": v, "paper_in_ci": in_ci,
            "note": note}


# ----------------------------------------------------------------------------------------- evidence

def add_seed(evidence: dict, variant: str, seed: int, *, accuracy_y10: float | None = None,
             accuracy_y1: float | None = None, class_change_y1: float | None = None,
             attacks: Mapping[str, tuple] | None = None, queries_per_flip=None,
             distance_y10_y1=None, distance_y10_attacked=None, raw_distance_y10_y1=None,
             raw_distance_y10_attacked=None, by_range: Mapping[str, Mapping] | None = None) -> dict:
    """Append one trained seed of ``variant`` to ``evidence`` (created empty: ``{}``) and return it.

    Scalars: fractions; None becomes NaN (that seed lacks it). attacks: {value range: (images attacked,
    images flipped) or (attacked, flipped, images one corner pixel can flip, None if not certified)}.
    The rest: 1-d arrays over the seed's flipped images (None: none); by_range: {other value range:
    {per-image key: array}}. Keeps every per-seed list aligned with ``seeds``, also for a value range
    first seen at a later seed.
    """
    v = evidence.setdefault("variants", {}).setdefault(variant, {"seeds": []})
    k = len(v["seeds"])
    v["seeds"].append(int(seed))
    for key, x in (("accuracy_y10", accuracy_y10), ("accuracy_y1", accuracy_y1),
                   ("class_change_y1", class_change_y1)):
        v.setdefault(key, [math.nan] * k).append(math.nan if x is None else float(x))
    for key, x in (("queries_per_flip", queries_per_flip), ("distance_y10_y1", distance_y10_y1),
                   ("distance_y10_attacked", distance_y10_attacked), ("raw_distance_y10_y1", raw_distance_y10_y1),
                   ("raw_distance_y10_attacked", raw_distance_y10_attacked)):
        v.setdefault(key, [[] for _ in range(k)]).append([] if x is None else np.asarray(x, np.float64).tolist())
    counted = v.setdefault("attacks", {})
    for name in set(counted) | set(attacks or {}):
        counts = counted.setdefault(name, {"attacked": [math.nan] * k, "flipped": [math.nan] * k,
                                           "flippable": [math.nan] * k})
        attacked, flipped, *rest = (attacks or {}).get(name, (math.nan, math.nan))
        flippable = rest[0] if rest and rest[0] is not None else math.nan
        counts["attacked"].append(attacked)
        counts["flipped"].append(flipped)
        counts.setdefault("flippable", [math.nan] * k).append(flippable)
    other = v.setdefault("by_range", {})
    for name in set(other) | set(by_range or {}):
        lists = other.setdefault(name, {})
        given = (by_range or {}).get(name) or {}
        for key in PER_IMAGE:
            x = given.get(key)
            lists.setdefault(key, [[] for _ in range(k)]).append([] if x is None else
                                                                 np.asarray(x, np.float64).tolist())
    return evidence


def class_change(pred_y10: np.ndarray, pred_y1: np.ndarray) -> float:
    """Fraction of test galaxies whose Y1 image a model puts in another class than their Y10 image
    (NaN without images): the numerical stand-in for "the Y1 image falls into another class region"."""
    a, b = np.asarray(pred_y10), np.asarray(pred_y1)
    if a.shape != b.shape:
        raise EvidenceError(f"class_change: predictions of shapes {a.shape} and {b.shape}")
    return float(np.mean(a != b)) if a.size else math.nan


def _variant(evidence: Mapping, name: str) -> Mapping | None:
    v = (evidence.get("variants") or {}).get(name) if isinstance(evidence, Mapping) else None
    return v if isinstance(v, Mapping) else None


def _per_seed(v: Mapping | None, key: str, path: str) -> np.ndarray | None:
    """A per-seed scalar list as floats (None when absent), its length checked against ``seeds``."""
    if v is None or v.get(key) is None:
        return None
    x = np.asarray(v[key], np.float64).reshape(-1)
    seeds = v.get("seeds")
    if seeds is not None and len(seeds) != len(x):
        raise EvidenceError(f"evidence {path}.{key}: {len(x)} values for {len(seeds)} seeds")
    return x


def _per_image(v: Mapping | None, key: str, path: str):
    """A per-image field as a list of per-seed arrays (None when absent or without any image)."""
    if v is None or v.get(key) is None:
        return None
    x = v[key]
    if isinstance(x, np.ndarray) or (isinstance(x, (list, tuple)) and (not x or np.isscalar(x[0]))):
        groups = [np.asarray(x, np.float64).reshape(-1)]
    else:
        groups = [np.asarray(g, np.float64).reshape(-1) for g in x]
        seeds = v.get("seeds")
        if seeds is not None and len(seeds) != len(groups):
            raise EvidenceError(f"evidence {path}.{key}: {len(groups)} per-seed arrays for {len(seeds)} seeds")
    # A seed that flipped nothing adds no image and no cluster to resample (as stats.bootstrap_ci).
    groups = [g for g in (g[~np.isnan(g)] for g in groups) if len(g)]
    return groups or None


def _kept(x: np.ndarray) -> tuple[np.ndarray, str]:
    """``x`` without NaN seeds, and a note when some were left out."""
    keep = x[~np.isnan(x)]
    return keep, (f"{len(x) - len(keep)} of {len(x)} seeds lack this number; left out. " if len(keep) < len(x)
                  else "")


def _seeds_note(est: Estimate) -> str:
    n = est.n if isinstance(est.n, tuple) else (est.n,)
    return "one training seed per model: no interval over seeds. " if min(n) < 2 else ""


SCALARS = ("accuracy_y10", "accuracy_y1", "class_change_y1")
PER_IMAGE = ("queries_per_flip", "distance_y10_y1", "distance_y10_attacked", "raw_distance_y10_y1",
             "raw_distance_y10_attacked")


def validate(evidence: Any) -> None:
    """Raise :class:`EvidenceError` unless ``evidence`` follows the schema: checked whole, before any
    interval is computed, so a wiring mistake fails at once and names the field."""
    if not isinstance(evidence, Mapping) or not isinstance(evidence.get("variants", {}), Mapping):
        raise EvidenceError("evidence must be a dict with a 'variants' dict")
    for name, v in evidence.get("variants", {}).items():
        if not isinstance(v, Mapping):
            raise EvidenceError(f"evidence variants.{name} must be a dict")
        for key in SCALARS:
            _per_seed(v, key, name)
        for key in PER_IMAGE:
            _per_image(v, key, name)
        attacks = v.get("attacks") or {}
        if not isinstance(attacks, Mapping):
            raise EvidenceError(f"evidence {name}.attacks must be {{value range: {{'attacked', 'flipped'}}}}")
        for rng, counts in attacks.items():
            if not isinstance(counts, Mapping):
                raise EvidenceError(f"evidence {name}.attacks[{rng}] must be a dict")
            a = _per_seed({**counts, "seeds": v.get("seeds")}, "attacked", f"{name}.attacks[{rng}]")
            f = _per_seed({**counts, "seeds": v.get("seeds")}, "flipped", f"{name}.attacks[{rng}]")
            if a is None or f is None or len(a) != len(f):
                raise EvidenceError(f"evidence {name}.attacks[{rng}]: needs 'attacked' and 'flipped', one per seed")
            _per_seed({**counts, "seeds": v.get("seeds")}, "flippable", f"{name}.attacks[{rng}]")
        other = v.get("by_range") or {}
        if not isinstance(other, Mapping) or not all(isinstance(x, Mapping) for x in other.values()):
            raise EvidenceError(f"evidence {name}.by_range must be {{value range: {{per-image key: lists}}}}")
        for rng, lists in other.items():
            for key in PER_IMAGE:
                _per_image({**lists, "seeds": v.get("seeds")}, key, f"{name}.by_range[{rng}]")


# ------------------------------------------------------------------------------------------- claims

def claim_accuracy_drop(evidence: Mapping, level: float = LEVEL) -> dict:
    """Claim 1: the regular model's Y10 minus Y1 accuracy, paired t interval over seeds."""
    c, v = CLAIMS["1"], _variant(evidence, "regular")
    y10, y1 = _per_seed(v, "accuracy_y10", "regular"), _per_seed(v, "accuracy_y1", "regular")
    if y10 is None or y1 is None:
        return row(c, None, note="no regular-model accuracies in the evidence", variant="regular")
    if len(y10) != len(y1):
        raise EvidenceError(f"evidence regular: {len(y10)} Y10 accuracies, {len(y1)} Y1 (paired by seed)")
    diff, note = _kept(y10 - y1)
    if not len(diff):
        return row(c, None, note="no seed has both accuracies", variant="regular")
    est = t_ci(diff, level)
    parts = {"regular Y10 accuracy": mean_std(y10, "omit"), "regular Y1 accuracy": mean_std(y1, "omit")}
    return row(c, est, parts, note + _seeds_note(est) + f"paired t interval over {est.n} seeds", variant="regular")


def _two_models_seeds(evidence: Mapping, key: str, first: str, second: str, claim: Claim, level: float,
                      what: str) -> dict:
    """mean(second) - mean(first) of a per-seed number, Welch's t interval."""
    a, b = _per_seed(_variant(evidence, first), key, first), _per_seed(_variant(evidence, second), key, second)
    if a is None or b is None:
        lacking = [m for m, x in ((first, a), (second, b)) if x is None]
        return row(claim, None, note=f"no {what} for {' and '.join(lacking)} in the evidence")
    (a, note_a), (b, note_b) = _kept(a), _kept(b)
    if not len(a) or not len(b):
        return row(claim, None, note=f"no seed with a {what} for one of the models")
    est = welch_ci(a, b, level)
    parts = {f"{first} {what}": mean_std(a), f"{second} {what}": mean_std(b)}
    return row(claim, est, parts, note_a + note_b + _seeds_note(est)
               + f"Welch t interval over {est.n[0]} + {est.n[1]} seeds")


def claim_mmd_recovers(evidence: Mapping, level: float = LEVEL) -> dict:
    """Claim 2: MMD's minus regular's Y1 accuracy, Welch's t interval over seeds."""
    return _two_models_seeds(evidence, "accuracy_y1", "regular", "mmd", CLAIMS["2"], level, "Y1 accuracy")


def claim_one_pixel_flips_most(evidence: Mapping, level: float = LEVEL) -> list[dict]:
    """Claim 3: per value range ("data", "[0, 1]" always; any other found) and model, the flipped
    fraction of the attacked images, t interval over seeds clipped to [0, 1]."""
    c = CLAIMS["3"]
    variants = [m for m in MODELS if _variant(evidence, m)] or list(MODELS)
    found = {r for m in variants for r in ((_variant(evidence, m) or {}).get("attacks") or {})}
    rows = []
    for rng in [*RANGES, *sorted(found - set(RANGES))]:
        for m in variants:
            counts = ((_variant(evidence, m) or {}).get("attacks") or {}).get(rng)
            if not isinstance(counts, Mapping):
                rows.append(row(c, None, note=f"no k = 1 attack in the {rng} value range for {m}", variant=m,
                                value_range=rng))
                continue
            attacked = _per_seed(counts, "attacked", f"{m}.attacks[{rng}]")
            flipped = _per_seed(counts, "flipped", f"{m}.attacks[{rng}]")
            if attacked is None or flipped is None or len(attacked) != len(flipped):
                raise EvidenceError(f"evidence {m}.attacks[{rng}]: needs 'attacked' and 'flipped', one per seed")
            seeds = (_variant(evidence, m) or {}).get("seeds")
            if seeds is not None and len(seeds) != len(attacked):
                raise EvidenceError(f"evidence {m}.attacks[{rng}]: {len(attacked)} counts for {len(seeds)} seeds")
            flippable = _per_seed(counts, "flippable", f"{m}.attacks[{rng}]")
            certified = flippable is not None and len(flippable) == len(attacked) and not np.isnan(flippable).any()
            searched = _fraction(flipped, attacked)
            frac, note = _kept(_fraction(flippable, attacked) if certified else searched)
            if not len(frac):
                rows.append(row(c, None, note=f"no attacked image in the {rng} value range for {m}", variant=m,
                                value_range=rng))
                continue
            est = _clip(t_ci(frac, level), 0.0, 1.0)
            parts = {}
            if certified:
                parts["the search's flipped fraction"] = _clip(t_ci(_kept(searched)[0], level), 0.0, 1.0)
                total = (f"certified: {int(np.nansum(flippable))} of {int(np.nansum(attacked))} images flippable by "
                         f"one corner pixel over {len(frac)} seeds, the search flipped {int(np.nansum(flipped))} "
                         f"(coverage {_coverage(flipped, flippable)}); ")
            else:
                total = (f"{int(np.nansum(flipped))} of {int(np.nansum(attacked))} images over {len(frac)} seeds, "
                         "the search's flips only (not certified: a lower bound); ")
            rows.append(row(c, est, parts, note + total + _seeds_note(est) + "t interval over seeds", variant=m,
                            value_range=rng))
    return rows


def _fraction(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """part / whole per seed, NaN where nothing was attacked."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(whole > 0, part / np.where(whole > 0, whole, 1), np.nan)


def _coverage(flipped: np.ndarray, flippable: np.ndarray) -> str:
    """The pooled coverage, flipped / flippable images, as text."""
    total = float(np.nansum(flippable))
    return f"{float(np.nansum(flipped)) / total:.2f}" if total else "-: nothing flippable"


def _clip(e: Estimate, lo: float, hi: float) -> Estimate:
    """An interval of a fraction kept inside [lo, hi] (a t interval can leave it; the fraction cannot)."""
    if not e.has_ci:
        return e
    return Estimate(e.value, max(e.lo, lo), min(e.hi, hi), e.n, e.std, e.level, e.method)


def _ranges(evidence: Mapping) -> list[str | None]:
    """The value ranges claims 4 and 5 have a row for: the configured one (the top-level per-image
    lists), then every other range of the models' ``by_range``."""
    first = evidence.get("configured_range") if isinstance(evidence, Mapping) else None
    others = {r for m in MODELS for r in ((_variant(evidence, m) or {}).get("by_range") or {})}
    return [first, *sorted(others - {first})]


def _in_range(evidence: Mapping, name: str, rng: str | None) -> Mapping | None:
    """Model ``name``'s per-image lists of value range ``rng`` (with its seeds)."""
    v = _variant(evidence, name)
    if v is None or rng == evidence.get("configured_range"):
        return v
    lists = (v.get("by_range") or {}).get(rng)
    return None if lists is None else {**lists, "seeds": v.get("seeds")}


def _ratio_rows(evidence: Mapping, claim: Claim, key: str, what: str, seed: int, level: float, n_boot: int,
                raw_key: str | None = None) -> list[dict]:
    """:func:`_ratio_row` for each value range of :func:`_ranges`."""
    return [_ratio_row(evidence, claim, key, what, seed, level, n_boot, raw_key, rng) for rng in _ranges(evidence)]


def _ratio_row(evidence: Mapping, claim: Claim, key: str, what: str, seed: int, level: float, n_boot: int,
               raw_key: str | None = None, rng: str | None = None) -> dict:
    """mean(mmd) / mean(regular) of a per-image number of value range ``rng``, the two models
    bootstrapped independently."""
    regular, mmd = _in_range(evidence, "regular", rng), _in_range(evidence, "mmd", rng)
    a = _per_image(regular, key, "regular")
    b = _per_image(mmd, key, "mmd")
    where = f" (attack in the {rng} value range)" if rng else ""
    if a is None or b is None:
        lacking = [m for m, x in (("regular", a), ("mmd", b)) if x is None]
        return row(claim, None, note=f"no {what} for {' and '.join(lacking)}{where}", value_range=rng)
    stream = stream_of("claims", claim.id)
    est = ratio_ci(a, b, seed=seed, stream=stream, level=level, n_boot=n_boot)
    parts = {f"regular mean {what}": bootstrap_ci(a, seed=seed, stream=stream_of("claims", claim.id, "regular"),
                                                  level=level, n_boot=n_boot),
             f"mmd mean {what}": bootstrap_ci(b, seed=seed, stream=stream_of("claims", claim.id, "mmd"), level=level,
                                              n_boot=n_boot)}
    if raw_key:
        ra = _per_image(regular, raw_key, "regular")
        rb = _per_image(mmd, raw_key, "mmd")
        if ra is not None and rb is not None:
            parts["raw distance ratio, MMD / regular (the paper's measure)"] = ratio_ci(
                ra, rb, seed=seed, stream=stream, level=level, n_boot=n_boot)
    note = f"bootstrap over {est.n[0]} + {est.n[1]} flipped images{where}"
    if len(a) > 1 or len(b) > 1:
        note += f", resampling {len(a)} + {len(b)} seeds first"
    return row(claim, est, parts, note, value_range=rng)


def claim_more_queries(evidence: Mapping, seed: int = 0, level: float = LEVEL, n_boot: int = N_BOOT) -> list[dict]:
    """Claim 4, per value range: mean queries per flipped image, MMD / regular, bootstrap over flipped images."""
    return _ratio_rows(evidence, CLAIMS["4"], "queries_per_flip", "queries per flip", seed, level, n_boot)


def claim_farther(evidence: Mapping, seed: int = 0, level: float = LEVEL, n_boot: int = N_BOOT) -> list[dict]:
    """Claims 5a (Y1) and 5b (attacked), per value range: mean scale-free distance, MMD / regular,
    bootstrap over images."""
    return [r for cid, kind in (("5a", "y10_y1"), ("5b", "y10_attacked"))
            for r in _ratio_rows(evidence, CLAIMS[cid], f"distance_{kind}", "scale-free distance", seed, level,
                                 n_boot, f"raw_distance_{kind}")]


def claim_other_class_region(evidence: Mapping, level: float = LEVEL) -> dict:
    """Claim 6: regular's minus MMD's Y1 class-change fraction, Welch's t interval over seeds."""
    return _two_models_seeds(evidence, "class_change_y1", "mmd", "regular", CLAIMS["6"], level,
                             "Y1 class-change fraction")


def claims(evidence: Mapping[str, Any], seed: int = 0, level: float = LEVEL, n_boot: int = N_BOOT) -> list[dict]:
    """The claims table: rows for claims 1, 2, 3 (per value range and model), 4, 5a, 5b (per value
    range), 6, in order.

    evidence: as the module docstring; seed: the bootstrap's seed (run.seed; each claim has its own
    stream); level: the intervals' confidence level; n_boot: bootstrap resamples.
    """
    validate(evidence)
    return [claim_accuracy_drop(evidence, level), claim_mmd_recovers(evidence, level),
            *claim_one_pixel_flips_most(evidence, level), *claim_more_queries(evidence, seed, level, n_boot),
            *claim_farther(evidence, seed, level, n_boot), claim_other_class_region(evidence, level)]


def summary(rows: list[dict]) -> dict[str, int]:
    """How many rows got each verdict."""
    return {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
