"""Numbers over training seeds: each analysed seed's numbers (:func:`.numbers.analyse`) side by side,
the evidence of the claims table (:mod:`.claims`), and what the figures draw with error bars.

With ``analyze.all_seeds`` every seed of ``train.seeds`` is one trained model per variant, attacked
on its own correctly classified images; a quantity's spread over seeds is the honest error bar of a
single run's number (the same seed on another CPU or thread count gives other weights: docs/train.md).
Spreads are the sample standard deviation over seeds (ddof 1; 0 for one seed is not an error bar).
"""

from __future__ import annotations

import numpy as np

from . import claims, distances
from .stats import LEVEL, N_BOOT, mean_std


def _spread(values: list) -> dict:
    """{"mean", "std", "n", "values"} of per-seed numbers, None entries left out."""
    kept = [float(x) for x in values if x is not None]
    e = mean_std(kept) if kept else None
    return {"mean": None if e is None else e.value, "std": None if e is None or len(kept) < 2 else e.std,
            "n": len(kept), "values": [None if x is None else float(x) for x in values]}


def spread(values: list, seeds: list) -> dict | None:
    """{"mean", "std" (sample, ddof 1; None for one value), "n", "values", "seeds"} of per-seed values;
    None when a seed has no value (a number of the comparison is complete over the seeds or not run)."""
    if not values or any(v is None for v in values):
        return None
    e = mean_std([float(v) for v in values])
    return {"mean": e.value, "std": e.std if len(values) > 1 else None, "n": len(values),
            "values": [float(v) for v in values], "seeds": list(seeds)}


def calibration(results: list[dict], bins: int) -> dict:
    """analysis.json's ``calibration``: per variant (every one with calibration numbers: the trained
    ones) and test set, the ECE, Brier score and accuracy over the analysed seeds (:func:`spread`),
    the test images per seed, and the reliability diagram of the seeds' images pooled."""
    from .calibration import DEFINITION, pooled_reliability

    seeds = [r["seed"] for r in results]
    variants = list(dict.fromkeys(v for r in results for v in r["calibration"]))
    out: dict = {"bins": bins, "definition": DEFINITION, "seeds": seeds, "variants": {}}
    for v in variants:
        per = [r["calibration"].get(v) for r in results]
        if any(p is None for p in per):
            continue
        out["variants"][v] = {d: {**{m: spread([p[d][m] for p in per], seeds) for m in ("ece", "brier", "accuracy")},
                                  "n": [p[d]["n"] for p in per],
                                  "reliability": pooled_reliability([p[d]["reliability"] for p in per])}
                              for d in ("y10", "y1")}
    return out


def evidence(results: list[dict]) -> dict:
    """The claims' evidence (:mod:`.claims`), one entry per analysed seed and model."""
    configured = results[0]["methods"]["configured"]["range"]
    ev: dict = {"configured_range": configured}
    for r in results:
        for v in r["variants"]:
            d = r["_panels"]["distances"][v]
            rows = {name: _row(r, name, v) for name in r["methods"]["ranges"]}
            attacks = {name: (row["attacked"], row["flipped"], _flippable(row)) for name, row in rows.items()
                       if row is not None}
            by_range = {name: _per_image(panel[v]) for name, panel in r["_panels"]["distances_by_range"].items()
                        if name != configured}
            acc = r["test_accuracy"][v]
            claims.add_seed(ev, v, r["seed"], accuracy_y10=acc["y10"], accuracy_y1=acc["y1"],
                            class_change_y1=r["y1_class_change"][v], attacks=attacks, by_range=by_range,
                            **_per_image(d))
    return ev


def _per_image(d: dict) -> dict:
    """The claims' per-image evidence of one model's Table 2 panel (``distances.table2``'s per_image)."""
    return {"queries_per_flip": d["queries"], "distance_y10_y1": d["y10_y1_scale_free"],
            "distance_y10_attacked": d["y10_attacked_scale_free"], "raw_distance_y10_y1": d["y10_y1"],
            "raw_distance_y10_attacked": d["y10_attacked"]}


def _flippable(row: dict) -> int | None:
    """Images one corner pixel can flip, from a methods-table row's certification (None: not certified,
    or some image undecided)."""
    c = row.get("certification")
    return None if not c or c.get("undecided") else c.get("flippable")


def certification(results: list[dict]) -> dict:
    """analysis.json's ``certification``: for the run's own k = 1 attack, per value range and model, each
    seed's certification (:func:`hpcmorph.attack.stage.certification`: images attacked, flipped by the
    search, flippable by one corner pixel, certified out of reach, undecided, the vulnerable fraction,
    the search's coverage, the rows it missed, the scan's cost) and the seeds pooled ("pooled":
    attacked, flipped, flippable, the pooled fractions, and the lowest per-seed coverage). A range or
    model without a certified attack is left out."""
    out: dict = {"seeds": [r["seed"] for r in results], "method": results[0]["methods"]["configured"]["method"],
                 "ranges": {}}
    for name in results[0]["methods"]["ranges"]:
        for v in results[0]["variants"]:
            per = []
            for r in results:
                row = _row(r, name, v)
                c = None if row is None else row.get("certification")
                if c is not None:
                    per.append({"seed": r["seed"], **c})
            if len(per) != len(results):
                continue
            attacked, flipped = sum(c["attacked"] for c in per), sum(c["flipped"] for c in per)
            flippable, undecided = sum(c["flippable"] for c in per), sum(c["undecided"] for c in per)
            covers = [c["coverage"] for c in per if c["coverage"] is not None]
            pooled = {"attacked": attacked, "flipped": flipped, "flippable": flippable, "undecided": undecided,
                      "vulnerable_fraction": flippable / attacked if attacked and not undecided else None,
                      "search_fraction": flipped / attacked if attacked else None,
                      "coverage": flipped / flippable if flippable and not undecided else None,
                      "min_coverage": min(covers) if covers else None}
            out["ranges"].setdefault(name, {})[v] = {"per_seed": per, "pooled": pooled}
    return out


def over_seeds(results: list[dict]) -> dict:
    """analysis.json's ``over_seeds``: per model, the test accuracies, accuracy against exposure,
    success against k and images flipped per value range, each as mean, std and the per-seed values."""
    variants = results[0]["variants"]
    out: dict = {"seeds": [r["seed"] for r in results], "models": {}}
    ks = sorted(set.intersection(*[set(r["success_vs_k"]["k"]) for r in results]))
    exposures = [r["exposure"] for r in results]
    for v in variants:
        m = {"accuracy_y10": _spread([r["test_accuracy"][v]["y10"] for r in results]),
             "accuracy_y1": _spread([r["test_accuracy"][v]["y1"] for r in results]),
             "y1_class_change": _spread([r["y1_class_change"][v] for r in results]),
             "success_vs_k": {"k": ks, "flipped_fraction": [
                 _spread([r["success_vs_k"]["flipped_fraction"][v][r["success_vs_k"]["k"].index(k)] for r in results])
                 for k in ks]},
             "flipped": {}}
        if all(e is not None for e in exposures):
            m["exposure"] = {"years": exposures[0]["years"],
                             "accuracy": [_spread([e["accuracy"][v][j] for e in exposures])
                                          for j in range(len(exposures[0]["years"]))]}
        for name in results[0]["methods"]["ranges"]:
            rows = [_row(r, name, v) for r in results]
            m["flipped"][name] = {"flipped": [None if x is None else x["flipped"] for x in rows],
                                  "attacked": [None if x is None else x["attacked"] for x in rows],
                                  "fraction": _spread([None if x is None or not x["attacked"]
                                                       else x["flipped"] / x["attacked"] for x in rows])}
        out["models"][v] = m
    return out


def table2(results: list[dict], seed: int = 0, level: float = LEVEL, n_boot: int = N_BOOT,
           value_range: str | None = None) -> dict:
    """Table 2 over every analysed seed: each model's flipped images of all seeds pooled (mean, population
    std and n over them), the intervals from the two-stage bootstrap (seeds, then images), so that one
    seed's few flips do not decide the table. One seed: that seed's own table. Adds "seeds" (the seeds
    pooled) and each model's "latent_scale" becomes the list of its per-seed scales (each seed's
    distances were divided by its own model's scale). value_range: the table of the attacks in that
    value range (a key of each result's "table2_by_range"); None: the configured attack's."""
    def own(r):
        return r["table2"] if value_range is None else r["table2_by_range"][value_range]

    def panel(r):
        return r["_panels"]["distances"] if value_range is None else r["_panels"]["distances_by_range"][value_range]

    if len(results) == 1:
        return {**own(results[0]), "seeds": [results[0]["seed"]]}
    keys = [*distances.KINDS, *(kind + "_scale_free" for kind in distances.KINDS), "latent_scale"]
    per = {v: {key: [panel(r)[v][key] for r in results] for key in keys} for v in results[0]["variants"]}
    table = distances.summary(per, results[0]["variants"], seed, level, n_boot)
    table["bootstrap"]["resamples"] = "seeds, then images"
    table["seeds"] = [r["seed"] for r in results]
    table["paper"] = distances.PAPER
    return table


def _row(result: dict, range_: str, variant: str) -> dict | None:
    """The methods-table row of the run's own attack method in value range ``range_`` for ``variant``."""
    c = result["methods"]["configured"]
    per = result["methods"]["ranges"].get(range_)
    return None if per is None else per["models"][variant].get(c["method"])


def robustness(results: list[dict]) -> tuple[dict, dict, float | None]:
    """The inputs of :func:`.figures.robustness`: success against k and against the query budget of
    the run's own attack, per model and seed; and that attack's budget."""
    by_k, by_budget, budget = {}, {}, None
    for v in results[0]["variants"]:
        by_k[v] = [dict(zip(r["success_vs_k"]["k"], r["success_vs_k"]["flipped_fraction"][v])) for r in results]
        by_budget[v] = []
        for r in results:
            row = _row(r, r["methods"]["configured"]["range"], v)
            attacked = 0 if row is None else row["attacked"]
            by_budget[v].append((np.asarray(r["_panels"]["distances"][v]["queries"], np.float64), attacked))
            budget = budget if row is None else row.get("budget") or budget
    return by_k, by_budget, budget

