"""Attack success against the query budget: every method and value range, scored against the oracle.

Reads every current k = 1 attack output of this config (:func:`hpcmorph.attack.compare.all_k1_configs`:
each method, the data's range and [0, 1]). All attack the same images. Per value range and model:

- a curve per method: the fraction of the attacked images flipped (some target reached) within q
  model queries, against q. An image's cost is the fewest queries any of its targets needed
  (column ``queries`` of a successful attack: the query at which it succeeded);
- the exhaustive corner search, where present, is the oracle: the fraction of images one pixel can
  flip at a corner value (a horizontal line in the figure);
- a methods table: images flipped / oracle-flippable images, median and mean queries per successful
  attack, the attack's wall time (its summary's ``wall_seconds``, when recorded);
- with ``attack.certify`` (or for the exhaustive search itself), each method row's ``certification``
  (:func:`hpcmorph.attack.stage.certification`): images one corner pixel can flip, certified out of
  reach, undecided, the vulnerable fraction and the attack's coverage, and the scan's cost.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import store
from ..attack.compare import all_k1_configs
from ..attack.stage import digest as attack_digest
from ..attack.stage import output_path as attack_path
from ..attack.stage import range_name
from ..config import Config
from ..mpi import log

ORACLE = "exhaustive"


def first_flip_queries(index: np.ndarray, success: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Per attacked image (in increasing row order): the fewest queries any successful attack of it
    used, +inf where none succeeded."""
    images = np.unique(index)
    out = np.full(len(images), np.inf)
    pos = np.searchsorted(images, index[success])
    np.minimum.at(out, pos, queries[success].astype(np.float64))
    return out


def success_curve(first: np.ndarray) -> dict:
    """The step curve of the images flipped within q queries: ``queries`` (each distinct cost, increasing)
    and ``flipped_fraction`` (of all attacked images, at that cost and above, until the next)."""
    n = len(first)
    done = np.sort(first[np.isfinite(first)])
    q = np.unique(done)
    counts = np.searchsorted(done, q, side="right")
    return {"queries": [int(v) for v in q], "flipped_fraction": [float(c / n) for c in counts]}


def within_budget(queries, attacked: int, budgets) -> np.ndarray:
    """Fraction of ``attacked`` images flipped within each budget of ``budgets``: (#queries <= q) / attacked.

    queries: the queries at which each flipped image was first flipped (the finite values of
    :func:`first_flip_queries`, any order). NaN everywhere when nothing was attacked.
    """
    q = np.sort(np.asarray(queries, np.float64).reshape(-1))
    b = np.asarray(budgets, np.float64)
    if attacked <= 0:
        return np.full(b.shape, np.nan)
    if len(q) > attacked:
        raise ValueError(f"within_budget: {len(q)} flipped images of {attacked} attacked")
    return np.searchsorted(q, b, side="right") / attacked


def fraction_at(curve: dict, budget: float) -> float:
    """The curve's value at ``budget`` queries (0 before its first step)."""
    q = np.asarray(curve["queries"], np.float64)
    i = int(np.searchsorted(q, budget, side="right"))
    return curve["flipped_fraction"][i - 1] if i else 0.0


def method_row(cols: dict, v_index: int, wall_seconds, budget) -> dict:
    """One model's numbers in one attack output (scalar columns ``variant, index, success, queries``)."""
    sel = cols["variant"] == v_index
    index, success, queries = cols["index"][sel], cols["success"][sel], cols["queries"][sel]
    first = first_flip_queries(index, success, queries)
    good = queries[success]
    return {"attacked": int(len(first)), "flipped": int(np.isfinite(first).sum()),
            "flipped_rows": [int(r) for r in np.unique(index)[np.isfinite(first)]],
            "successful_attacks": int(success.sum()), "attacks": int(sel.sum()),
            "median_queries_to_flip": float(np.median(good)) if len(good) else None,
            "mean_queries_to_flip": float(good.mean()) if len(good) else None,
            "budget": budget, "wall_seconds": wall_seconds, "curve": success_curve(first)}


def read_output(path: Path, variants: list[str]) -> dict[str, dict] | None:
    """{model: :func:`method_row`} of one attack output; None when its models are not ``variants``."""
    with store.open_checked(path, "attack") as f:
        cols = {name: f[name][...] for name in ("variant", "index", "success", "queries")}
        found = str(f.attrs["variant_names"]).split(",")
        summary = json.loads(f.attrs["summary"])
    if found != variants:
        return None
    rows = {v: method_row(cols, found.index(v), summary.get("wall_seconds"), summary.get("budget")) for v in variants}
    cert = summary.get("certification")
    for v in variants:
        rows[v]["certification"] = None if not cert else {
            **{k: x for k, x in cert["variants"][v].items()}, "precision": cert.get("precision"),
            "scan": (cert.get("cost") or {}).get(v)}
    return rows


def outputs(cfg: Config) -> list[tuple[Config, Path]]:
    """The current k = 1 attack outputs of this config's images, each (its config, its path)."""
    found = []
    for c in all_k1_configs(cfg):
        path = attack_path(c)
        if path.exists() and store.output_digest(path) == attack_digest(c):
            found.append((c, path))
    return found


def compare(cfg: Config, variants: list[str]) -> dict:
    """analysis.json's ``methods``: the configured attack, and per value range and model the methods
    table and success-against-queries curves of every current k = 1 attack output."""
    ranges: dict[str, dict] = {}
    for c, path in outputs(cfg):
        rows = read_output(path, variants)
        if rows is None:
            log.warning("analyze: %s attacked other models; left out of the methods comparison", path.name)
            continue
        per = ranges.setdefault(range_name(c.attack.pixel_range), {"files": {}, "models": {v: {} for v in variants}})
        per["files"][c.attack.method] = path.name
        for v in variants:
            per["models"][v][c.attack.method] = rows[v]
    for per in ranges.values():
        for methods in per["models"].values():
            oracle = methods.get(ORACLE)
            flippable = set(oracle["flipped_rows"]) if oracle else None
            for m in methods.values():
                m["oracle_flippable"] = None if flippable is None else len(flippable)
                m["flipped_of_oracle"] = None if flippable is None else len(flippable & set(m["flipped_rows"]))
                m["oracle_fraction"] = (m["flipped_of_oracle"] / len(flippable) if flippable else None)
                m.pop("flipped_rows")
    a = cfg.attack
    return {"configured": {"method": a.method, "range": range_name(a.pixel_range), "pixels": a.pixels},
            "ranges": ranges}
