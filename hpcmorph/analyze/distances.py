"""Table 2: how far the flipped images move in each model's latent space, by attack and by noise.

An image is *flipped* for a model when at least one of its targeted attacks succeeded; its attacked
image is then the successful attack with the fewest queries (ties: the lowest target), the cheapest
way the search found across the decision boundary. Distances are Euclidean in the 256-d latent
space, computed in float64; mean and population standard deviation (ddof 0, as numpy) over the
flipped images, as the paper's "136 of 150".
"""

from __future__ import annotations

import numpy as np

# The paper's Table 2 (Euclidean latent distances, mean and std over 136 flipped images).
PAPER = {
    "regular": {"y10_y1": {"mean": 20.2, "std": 11.9, "n": 136}, "y10_attacked": {"mean": 16.8, "std": 5.0, "n": 136}},
    "mmd": {"y10_y1": {"mean": 29.7, "std": 17.4, "n": 136}, "y10_attacked": {"mean": 38.1, "std": 15.5, "n": 136}},
    "ratio_mmd_over_regular": {"y10_y1": 29.7 / 20.2, "y10_attacked": 38.1 / 16.8},
}
KINDS = ("y10_y1", "y10_attacked")


def chosen_attacks(variant: np.ndarray, index: np.ndarray, success: np.ndarray, queries: np.ndarray,
                   target: np.ndarray, v: int) -> np.ndarray:
    """Rows of the attack table giving model ``v``'s attacked image of each flipped image, ordered by
    image index: per image, the successful attack with the fewest queries, ties to the lowest target."""
    rows = np.flatnonzero((np.asarray(variant) == v) & np.asarray(success, bool))
    # lexsort: the last key is the primary one.
    rows = rows[np.lexsort((target[rows], queries[rows], index[rows]))]
    first = np.ones(len(rows), bool)
    first[1:] = index[rows][1:] != index[rows][:-1]
    return rows[first]


def stats(d: np.ndarray) -> dict:
    """{"mean", "std" (population), "n"} of distances ``d``; mean and std None when there are none."""
    d = np.asarray(d, np.float64)
    if len(d) == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(d.mean()), "std": float(d.std()), "n": int(len(d))}


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean distances (n,) between latents ``a`` and ``b`` (n, D), in float64."""
    return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)


def table2(attacks: dict[str, np.ndarray], z_attacked: np.ndarray, test_index: np.ndarray, z_y10: np.ndarray,
           z_y1: np.ndarray, variants: list[str]) -> tuple[dict, dict]:
    """Table 2 and the per-image distances behind it.

    attacks: the attack table's columns ``variant`` (index into ``variants``), ``index`` (galaxy row),
        ``success``, ``queries``, ``target`` (N,); z_attacked: (N, D) latents of its attacked images.
    test_index: (n,) galaxy rows of ``z_y10`` and ``z_y1``, shaped (n, V, D) (V = len(variants)).
    Returns (table, per_image): table = {variant: {"y10_y1": stats, "y10_attacked": stats},
    "ratio_mmd_over_regular": {kind: ratio of means or None}}; per_image = {variant: {"index",
    "attack_row", "y10_y1", "y10_attacked"}} (arrays over the flipped images).
    """
    where = {int(r): i for i, r in enumerate(test_index)}
    table: dict = {}
    per_image: dict = {}
    for v, name in enumerate(variants):
        rows = chosen_attacks(attacks["variant"], attacks["index"], attacks["success"], attacks["queries"],
                              attacks["target"], v)
        images = attacks["index"][rows]
        pos = np.array([where[int(r)] for r in images], np.int64)
        d_att = distance(z_attacked[rows], z_y10[pos, v]) if len(rows) else np.zeros(0)
        d_y1 = distance(z_y1[pos, v], z_y10[pos, v]) if len(rows) else np.zeros(0)
        per_image[name] = {"index": images, "attack_row": rows, "y10_y1": d_y1, "y10_attacked": d_att}
        table[name] = {"y10_y1": stats(d_y1), "y10_attacked": stats(d_att)}
    table["ratio_mmd_over_regular"] = {kind: ratio(table, kind) for kind in KINDS}
    return table, per_image


def ratio(table: dict, kind: str) -> float | None:
    """mmd mean / regular mean of ``kind``; None when a variant or a mean is missing (or zero)."""
    try:
        top, bottom = table["mmd"][kind]["mean"], table["regular"][kind]["mean"]
    except KeyError:
        return None
    if top is None or not bottom:
        return None
    return float(top / bottom)


def format_table(table: dict) -> str:
    """Table 2 as Markdown, this run beside the paper."""
    lines = ["| distance | model | this run (mean ± std, n) | paper |", "|---|---|---|---|"]
    for kind, label in (("y10_y1", "Y10 - Y1"), ("y10_attacked", "Y10 - attacked")):
        for name in ("regular", "mmd"):
            if name not in table:
                continue
            s, p = table[name][kind], PAPER[name][kind]
            mine = "-" if s["mean"] is None else f"{s['mean']:.3g} ± {s['std']:.3g} ({s['n']})"
            lines.append(f"| {label} | {name} | {mine} | {p['mean']} ± {p['std']} |")
    r = table["ratio_mmd_over_regular"]
    lines.append("mmd / regular mean: " + ", ".join(
        f"{kind} {'-' if r[kind] is None else format(r[kind], '.2f')} (paper {PAPER['ratio_mmd_over_regular'][kind]:.2f})"
        for kind in KINDS))
    return "\n".join(lines)
