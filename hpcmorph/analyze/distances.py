"""Table 2: how far the flipped images move in each model's latent space, by attack and by noise.

An image is *flipped* for a model when at least one of its targeted attacks succeeded; its attacked
image is then the successful attack with the fewest queries (ties: the lowest target), the cheapest
way the search found across the decision boundary. Distances are Euclidean in the 256-d latent
space, computed in float64; mean and population standard deviation (ddof 0, as numpy) over the
flipped images, as the paper's "136 of 150".

Raw distances cannot be compared across models: each model's latent space has its own scale (MMD
training changes it), so "mmd / regular" of raw means mixes "the attack moved the image further"
with "this latent space is larger". Beside them, every distance is also given **scale-free**: divided
by the model's :func:`latent_scale`, the median Euclidean distance between two of its Y10 test
latents. A scale-free distance of 0.5 reads "half the typical distance between two test galaxies in
this model's latent space"; it is unchanged when a latent space is multiplied by a constant (and
when it is shifted or rotated), and the mmd / regular ratio of scale-free means is comparable across
models. Each mean has a percentile-bootstrap interval over the flipped images, and each ratio one with
the two models' images resampled independently (``stats.py``).
"""

from __future__ import annotations

import math

import numpy as np

from .. import paper
from .stats import LEVEL, N_BOOT, Estimate, bootstrap_ci, ratio_ci, stream_of

# The paper's Table 2, with the ratios claim 4 compares (hpcmorph.paper holds the numbers).
KINDS = ("y10_y1", "y10_attacked")
PAPER = {**paper.TABLE2, "ratio_mmd_over_regular": {
    kind: paper.TABLE2["mmd"][kind]["mean"] / paper.TABLE2["regular"][kind]["mean"] for kind in KINDS}}
# Y10 latents used for a latent scale: evenly spaced test rows beyond this (about 2 million pairs).
SCALE_POINTS = 2000


def latent_scale(z_y10: np.ndarray, max_points: int = SCALE_POINTS) -> float:
    """A model's latent scale: the median Euclidean distance between two of its Y10 test latents.

    z_y10: (n, D) latents of the model's Y10 test images. Above ``max_points`` images, the pairs of
    ``max_points`` evenly spaced rows (no random draw: the scale is a function of the latents alone).
    NaN when there is no scale to divide by: fewer than two latents, or a median pair distance of 0.

    Why this spread: the median pairwise distance is in the latents' own units (z -> c z multiplies it
    by |c|; a shift or rotation leaves it as it is), is robust (a few outlying latents do not move it,
    unlike the std or the largest distance), and reads directly: the typical distance between two
    different galaxies as the model sees them. Why the Y10 test latents: Y10 is the labelled domain
    every model is trained on, and the same images serve every model (Y1 latents would put the noise
    being measured into the yardstick).
    """
    from scipy.spatial.distance import pdist

    z = np.asarray(z_y10, np.float64)
    if z.ndim != 2:
        raise ValueError(f"latent_scale needs (n, D) latents, got shape {z.shape}")
    if len(z) < 2:
        return math.nan
    if len(z) > max_points:
        z = z[np.linspace(0, len(z) - 1, max_points).round().astype(np.int64)]
    scale = float(np.median(pdist(z)))
    return scale if scale > 0 else math.nan


def scale_free(d: np.ndarray, scale: float) -> np.ndarray:
    """Distances ``d`` in units of a model's :func:`latent_scale` (dimensionless); NaN where the scale
    is NaN (no scale: the scale-free numbers are then missing, never made up)."""
    if not (math.isnan(scale) or (math.isfinite(scale) and scale > 0)):
        raise ValueError(f"a latent scale must be positive and finite (or NaN: none), not {scale}")
    return np.asarray(d, np.float64) / scale


def _pool(x) -> np.ndarray:
    """A 1-d array, or a list of per-seed arrays, as one 1-d array."""
    if isinstance(x, (list, tuple)) and len(x) and not np.isscalar(x[0]):
        return np.concatenate([np.asarray(g, np.float64).reshape(-1) for g in x])
    return np.asarray(x, np.float64).reshape(-1)


def intervals(raw, free, seed: int = 0, stream: int = 0, level: float = LEVEL,
              n_boot: int = N_BOOT) -> tuple[list, dict]:
    """The bootstrap intervals of one Table 2 cell: ([lo, hi] of the raw mean, the scale-free mean's
    :meth:`.stats.Estimate.to_json`, its std the population std over images as the raw column's).

    raw, free: the same images' raw and scale-free distances, each a 1-d array or a list of per-seed
    arrays (then the bootstrap resamples seeds, then images). Scale-free NaNs (no latent scale) are
    left out, so a model without a scale has n = 0 and nulls. Both use the same bootstrap stream: the
    two intervals are one interval in two units.
    """
    r = bootstrap_ci(raw, seed=seed, stream=stream, level=level, n_boot=n_boot).to_json()
    f = bootstrap_ci(free, seed=seed, stream=stream, level=level, n_boot=n_boot, nan="omit")
    kept = _pool(free)
    kept = kept[~np.isnan(kept)]
    std = float(np.std(kept)) if len(kept) else math.nan
    return [r["lo"], r["hi"]], Estimate(f.value, f.lo, f.hi, f.n, std, f.level, f.method).to_json()


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


def table2(attacks, z_attacked: np.ndarray, test_index: np.ndarray, z_y10: np.ndarray,
           z_y1: np.ndarray, variants: list[str], seed: int = 0, level: float = LEVEL,
           n_boot: int = N_BOOT) -> tuple[dict, dict]:
    """Table 2 and the per-image distances behind it.

    attacks: the attack table's rows (:class:`.inputs.AttackRows`; read: ``variant``, an index into
        ``variants``, ``index``, the galaxy row, ``success``, ``queries``, ``target``, each (N,));
        z_attacked: (N, D) latents of its attacked images.
    test_index: (n,) galaxy rows of ``z_y10`` and ``z_y1``, shaped (n, V, D) (V = len(variants)).
    seed: the bootstrap's seed (run.seed); level, n_boot: its confidence level and resamples.
    Returns (table, per_image): table = {variant: {"y10_y1"|"y10_attacked": {"mean", "std", "n"} (raw),
    "mean_ci": {kind: [lo, hi]} (raw mean), "scale_free": {kind: Estimate JSON}, "latent_scale": float
    or None}, "ratio_mmd_over_regular": {kind: ratio of raw means or None}, "ratios": :func:`ratios`,
    "bootstrap": {"level", "n_boot", "seed"}}; per_image = {variant: {"index", "attack_row", "y10_y1",
    "y10_attacked", "y10_y1_scale_free", "y10_attacked_scale_free" (arrays over the flipped images),
    "latent_scale"}}.
    """
    where = {int(r): i for i, r in enumerate(test_index)}
    per_image: dict = {}
    for v, name in enumerate(variants):
        rows = chosen_attacks(attacks.variant, attacks.index, attacks.success, attacks.queries, attacks.target, v)
        images = attacks.index[rows]
        pos = np.array([where[int(r)] for r in images], np.int64)
        d_att = distance(z_attacked[rows], z_y10[pos, v]) if len(rows) else np.zeros(0)
        d_y1 = distance(z_y1[pos, v], z_y10[pos, v]) if len(rows) else np.zeros(0)
        per_image[name] = {"index": images, "attack_row": rows, "y10_y1": d_y1, "y10_attacked": d_att}
        scale = latent_scale(z_y10[:, v])
        per_image[name]["latent_scale"] = scale
        for kind in KINDS:
            per_image[name][kind + "_scale_free"] = scale_free(per_image[name][kind], scale)
    return summary(per_image, variants, seed, level, n_boot), per_image


def summary(per_image: dict, variants: list[str], seed: int = 0, level: float = LEVEL,
            n_boot: int = N_BOOT) -> dict:
    """Table 2 from each model's per-image distances: per_image = {variant: {kind and kind + "_scale_free":
    a 1-d array, or a list of per-seed arrays (pooled: n counts every seed's images, the intervals
    resample seeds, then images), "latent_scale": a float, or the list of per-seed scales}}. The layout
    :func:`table2` documents (a missing latent scale as None)."""
    table: dict = {}
    for name in variants:
        p = per_image[name]
        scale = p["latent_scale"]
        scale = [_json_scale(s) for s in scale] if isinstance(scale, list) else _json_scale(scale)
        table[name] = {**{kind: stats(_pool(p[kind])) for kind in KINDS},
                       **cell_intervals(p, name, seed, level, n_boot), "latent_scale": scale}
    table["ratio_mmd_over_regular"] = {kind: ratio(table, kind) for kind in KINDS}
    table["ratios"] = ratios(per_image, seed, level, n_boot)
    table["bootstrap"] = {"level": level, "n_boot": n_boot, "seed": seed}
    return table


def _json_scale(scale: float) -> float | None:
    return None if math.isnan(scale) else float(scale)


def cell_intervals(per_image: dict, name: str, seed: int = 0, level: float = LEVEL,
                   n_boot: int = N_BOOT) -> dict:
    """One model's new Table 2 keys: {"mean_ci": {kind: [lo, hi]}, "scale_free": {kind: Estimate JSON}}.

    per_image: the model's {kind: raw distances, kind + "_scale_free": scale-free ones} (1-d arrays, or
    lists of per-seed arrays). Each (model, kind) has its own bootstrap stream.
    """
    out: dict = {"mean_ci": {}, "scale_free": {}}
    for kind in KINDS:
        out["mean_ci"][kind], out["scale_free"][kind] = intervals(
            per_image[kind], per_image[kind + "_scale_free"], seed, stream_of("table2", name, kind), level,
            n_boot)
    return out


def ratios(per_image: dict, seed: int = 0, level: float = LEVEL, n_boot: int = N_BOOT) -> dict:
    """Table 2's "ratios": {"raw"|"scale_free": {kind: Estimate JSON of mean(mmd) / mean(regular)}},
    the two models' images resampled independently; {} without both models.

    per_image: {variant: {kind: distances, kind + "_scale_free": distances}}, each a 1-d array or a list
    of per-seed arrays. The raw ratio is the paper's "~2.3"; only the scale-free one compares the models.
    """
    if not {"regular", "mmd"} <= set(per_image):
        return {}
    out: dict = {"raw": {}, "scale_free": {}}
    for kind in KINDS:
        stream = stream_of("table2", "ratio", kind)
        for unit, key in (("raw", kind), ("scale_free", kind + "_scale_free")):
            out[unit][kind] = ratio_ci(per_image["regular"][key], per_image["mmd"][key], seed=seed,
                                             stream=stream, level=level, n_boot=n_boot, nan="omit").to_json()
    return out


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
        f"{kind} {'-' if r[kind] is None else format(r[kind], '.2f')} "
        f"(paper {PAPER['ratio_mmd_over_regular'][kind]:.2f})"
        for kind in KINDS))
    free = table.get("ratios", {}).get("scale_free", {})
    if free:
        lines.append("scale-free mmd / regular mean: " + ", ".join(
            f"{kind} {_estimate_text(free.get(kind))}" for kind in KINDS))
    return "\n".join(lines)


def _estimate_text(e: dict | None) -> str:
    if not e or e.get("value") is None:
        return "-"
    bounds = "" if e.get("lo") is None else f" [{e['lo']:.2f}, {e['hi']:.2f}]"
    return f"{e['value']:.2f}{bounds}"
