"""Every trained variant in one table: accuracy, calibration, one-pixel and k-pixel success, success
within a query budget and latent distances, each over training seeds (analysis.json ``comparison``).

Generic over the variants: a row per variant of ``train.variants`` (then any other analysed one), in
that order. Each number comes from the stage that measured it: the accuracies from
``train_summary.json`` (every trained seed), calibration from the analysis's own latents of the test
split (every analysed seed; a trained variant that was not attacked is embedded for it), attack
success from the attack outputs of the analysed seeds, the distances from the pooled Table 2. A
piece the run does not have (a variant not attacked, a k not swept, an attack not certified, a
budget above the attack's) is None, never 0: the report shows it as "not run".
"""

from __future__ import annotations

import math

from . import queries
from .seeds import spread

# Query budgets of the "success within the budget" columns: absolute, so the same for every variant
# (all are attacked with the same settings); one above the attack's own budget is left out (None).
BUDGETS = (10, 100)
DISTANCES = ("y10_y1", "y10_attacked")


def _configured_row(result: dict, range_: str, variant: str, method: str | None = None) -> dict | None:
    """The methods-table row of ``method`` (default: the run's own) in ``range_`` for ``variant``."""
    m = result["methods"]
    per = m["ranges"].get(range_)
    if per is None or variant not in per["models"]:
        return None
    return per["models"][variant].get(method or m["configured"]["method"])


def _exact(result: dict, range_: str, variant: str) -> tuple[float | None, str | None]:
    """(the fraction of the attacked images one corner pixel can flip, where it comes from): the
    attack's certification, else the exhaustive search of the same images; (None, None) without either."""
    row = _configured_row(result, range_, variant)
    cert = None if row is None else row.get("certification")
    if cert and not cert.get("undecided") and cert.get("attacked"):
        return cert["flippable"] / cert["attacked"], "certified"
    oracle = _configured_row(result, range_, variant, queries.ORACLE)
    if oracle is not None and oracle["attacked"]:
        return oracle["flipped"] / oracle["attacked"], "exhaustive"
    return None, None


def one_pixel(results: list[dict], range_: str, variant: str) -> dict | None:
    """The k = 1 columns of one value range: {"search": spread of flipped / attacked (the run's own
    method), "exact": spread of the certified (or exhaustive) vulnerable fraction or None,
    "exact_source"}; None when the variant has no k = 1 attack in that range."""
    seeds = [r["seed"] for r in results]
    rows = [_configured_row(r, range_, variant) for r in results]
    if any(row is None or not row["attacked"] for row in rows):
        return None
    exact = [_exact(r, range_, variant) for r in results]
    sources = sorted({str(s) for _, s in exact})
    known = "None" not in sources
    return {"search": spread([row["flipped"] / row["attacked"] for row in rows], seeds),
            "exact": spread([x for x, _ in exact], seeds) if known else None,
            "exact_source": " or ".join(sources) if known else None}


def success_at_k(results: list[dict], variant: str, k: int) -> dict | None:
    """Spread of the fraction of the attacked images flipped at k pixels; None where a seed has no
    current k-pixel attack (the k was not swept) or the variant was not attacked."""
    values = []
    for r in results:
        s = r["success_vs_k"]
        if k not in s["k"] or variant not in s["flipped_fraction"]:
            return None
        values.append(s["flipped_fraction"][variant][s["k"].index(k)])
    return spread(values, [r["seed"] for r in results])


def within_budget(results: list[dict], variant: str, budget: int) -> dict | None:
    """Spread of the fraction of the attacked images the run's own attack (its value range) flipped
    within ``budget`` queries; None when the attack's budget is unknown or below it."""
    values = []
    for r in results:
        row = _configured_row(r, r["methods"]["configured"]["range"], variant)
        if row is None or not row["attacked"] or row.get("budget") is None or budget > row["budget"]:
            return None
        values.append(queries.fraction_at(row["curve"], budget))
    return spread(values, [r["seed"] for r in results])


def accuracies(train_runs: list[dict], variant: str) -> dict:
    """{"accuracy_y10", "accuracy_y1", "train_images_per_s"}: spreads over every trained seed of
    train_summary.json's runs (the training speed: labelled images per second over the steps)."""
    mine = sorted((r for r in train_runs if r.get("variant") == variant), key=lambda r: r["seed"])
    seeds = [r["seed"] for r in mine]
    return {**{f"accuracy_{d}": spread([(r.get(d) or {}).get("accuracy") for r in mine], seeds) for d in ("y10", "y1")},
            "train_images_per_s": spread([_finite(r.get("train_images_per_s")) for r in mine], seeds)}


def _finite(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def training_cost(rows: dict, baseline: str = "regular") -> None:
    """Each row's ``train_time_ratio``: the baseline's mean training speed over its own (how many times as
    long a step of the same batch takes; the same run, machine and settings); None without both."""
    base = (rows.get(baseline) or {}).get("train_images_per_s") or {}
    for row in rows.values():
        mine = row.get("train_images_per_s") or {}
        ok = base.get("mean") and mine.get("mean")
        row["train_time_ratio"] = base["mean"] / mine["mean"] if ok else None


def calibration(results: list[dict], variant: str) -> dict:
    """{"ece_y10", "ece_y1", "brier_y10", "brier_y1"}: spreads over the analysed seeds."""
    seeds = [r["seed"] for r in results]
    out = {}
    for measure in ("ece", "brier"):
        for d in ("y10", "y1"):
            cal = [(r.get("calibration") or {}).get(variant) for r in results]
            out[f"{measure}_{d}"] = spread([None if c is None else c[d][measure] for c in cal], seeds)
    return out


def distances(table2: dict, variant: str) -> dict:
    """{"distance_y10_y1", "distance_y10_attacked"}: the pooled Table 2's scale-free means with their
    intervals over the flipped images (estimates), None without flipped images."""
    cell = table2.get(variant) if isinstance(table2.get(variant), dict) else None
    out = {}
    for kind in DISTANCES:
        e = None if cell is None else (cell.get("scale_free") or {}).get(kind)
        out[f"distance_{kind}"] = e if e and e.get("n") else None
    return out


def variants_of(trained: list[str], results: list[dict]) -> list[str]:
    """The table's rows: every trained variant, then any other analysed one, each once."""
    seen = list(dict.fromkeys(trained))
    for r in results:
        seen += [v for v in (*r["variants"], *(r.get("calibration") or {})) if v not in seen]
    return seen


def table(trained: list[str], results: list[dict], train_runs: list[dict], table2: dict, ks: list[int],
          bins: int, budgets=BUDGETS) -> dict:
    """analysis.json's ``comparison`` (docs/analyze.md): per variant, the row described in the module
    docstring. ``results``: the analysed seeds' numbers (:func:`.stage.analyse_seed`); ``ks``: the
    k > 1 columns; ``bins``: the calibration bins."""
    configured = results[0]["methods"]["configured"]
    ranges = list(dict.fromkeys(name for r in results for name in r["methods"]["ranges"]))
    if configured["range"] not in ranges:
        ranges.insert(0, configured["range"])
    rows = {}
    for v in variants_of(trained, results):
        attacked = all(v in r["variants"] for r in results)
        rows[v] = {"name": v, "attacked": attacked, **accuracies(train_runs, v), **calibration(results, v),
                   "one_pixel": {name: one_pixel(results, name, v) if attacked else None for name in ranges},
                   "success_k": {str(k): success_at_k(results, v, k) if attacked else None for k in ks},
                   "within_budget": {str(q): within_budget(results, v, q) if attacked else None for q in budgets},
                   **(distances(table2, v) if attacked else dict.fromkeys(f"distance_{k}" for k in DISTANCES))}
    training_cost(rows)
    return {"variants": list(rows), "seeds": [r["seed"] for r in results],
            "trained_seeds": sorted({r["seed"] for r in train_runs}), "configured": configured, "ranges": ranges,
            "k": list(ks), "budgets": list(budgets), "calibration_bins": bins, "rows": rows}
