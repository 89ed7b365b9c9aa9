"""What ``analyze`` shows a person, in ``analysis/`` (PNG, with a PDF beside each).

- ``figure2.png``: the paper's Figure 2: per model (regular top row, mmd bottom row) the church
  window of the triplet (left) and the isomap (right);
- ``church_windows.png`` and ``isomaps.png``: the two columns of Figure 2 on their own, models side
  by side;
- ``distances.png``: histograms of the Table 2 distances (Y10 to Y1, Y10 to attacked) per model;
- ``exposure.png``: test accuracy against exposure time, per model;
- ``success_vs_k.png``: fraction of the attacked images flipped against the number of pixels k;
- ``robustness.png`` (:func:`robustness`): the same against k and against the query budget, mean
  over training seeds with the std over seeds;
- ``calibration.png`` (:func:`reliability`): the reliability diagram, Y10 and Y1, a line per variant;
- ``comparison.png`` (:func:`robustness_vs_accuracy`): one-pixel success against Y1 accuracy, a
  point per variant and seed.

A panel is drawn from plain arrays (``panels`` below), so the figures need no model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import plots
from ..generate.classes import CLASS_NAMES

# Markers of the triplet, as the paper: Y10 x, Y1 star, attacked triangle.
MARK = {"y10": ("x", "Y10"), "y1": ("*", "Y1"), "attacked": ("^", "attacked")}


def _class_legend(ax, **kwargs) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=n) for c, n in zip(plots.CLASS_COLOURS, CLASS_NAMES)]
    ax.legend(handles=handles, fontsize=6, **kwargs)


def church_panel(ax, variant: str, panel: dict | None) -> None:
    """One church window: classes as the paper's colours, the triplet's markers, true and target in the title.

    panel: {"window": church.window(...), "label", "target", "flipped"} or None (nothing to draw).
    """
    from matplotlib.colors import ListedColormap

    if panel is None or panel.get("window") is None:
        ax.text(0.5, 0.5, "no attacked image", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(variant, fontsize=8)
        return
    win = panel["window"]
    xs, ys = win["xs"], win["ys"]
    dx = (xs[1] - xs[0]) / 2 if len(xs) > 1 else 0.5
    ax.imshow(win["classes"], origin="lower", cmap=ListedColormap(plots.CLASS_COLOURS), vmin=-0.5,
              vmax=len(CLASS_NAMES) - 0.5, extent=(xs[0] - dx, xs[-1] + dx, ys[0] - dx, ys[-1] + dx),
              interpolation="nearest", aspect="auto")
    for key, (marker, label) in MARK.items():
        x, y = win["markers"][key]
        if marker == "x":  # no face: a black cross on a wider white one, visible on any class colour
            ax.scatter([x], [y], marker="x", s=55, c="w", linewidths=3.5, zorder=3)
            ax.scatter([x], [y], marker="x", s=55, c="k", linewidths=1.6, zorder=4, label=label)
        else:
            ax.scatter([x], [y], marker=marker, s=80 if marker == "*" else 50, c="w", edgecolors="k",
                       linewidths=1.0, label=label, zorder=3)
    flipped = "" if panel.get("flipped", True) else " (attack failed: best candidate)"
    ax.set_title(f"{variant}: true {CLASS_NAMES[panel['label']]}, target {CLASS_NAMES[panel['target']]}{flipped}",
                 fontsize=8)
    ax.set_xlabel(f"attack direction (|adv| = {win['norm_adv']:.3g})", fontsize=7)
    ax.set_ylabel(f"noise direction (|noise| = {win['norm_noise']:.3g})", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, loc="lower left", framealpha=0.8)


def isomap_panel(ax, variant: str, panel: dict | None) -> None:
    """One isomap: Y10 filled and Y1 hollow circles coloured by true class, the triplet marked.

    panel: {"isomap": isomap.fit(...), "labels": (n,) true classes, "triplet_pos": position of the
    triplet in the sample or None} or None.
    """
    if panel is None or panel.get("isomap") is None:
        ax.text(0.5, 0.5, "no isomap", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(variant, fontsize=8)
        return
    iso, labels = panel["isomap"], np.asarray(panel["labels"])
    colours = np.array(plots.CLASS_COLOURS)[labels]
    ax.scatter(iso["y10"][:, 0], iso["y10"][:, 1], s=14, c=colours, edgecolors="none", alpha=0.85)
    ax.scatter(iso["y1"][:, 0], iso["y1"][:, 1], s=14, facecolors="none", edgecolors=colours, linewidths=0.8)
    t = panel.get("triplet_pos")
    if t is not None:
        ax.scatter(*iso["y10"][t], marker="x", s=60, c="k", linewidths=2.0, zorder=3, label="Y10")
        ax.scatter(*iso["y1"][t], marker="*", s=90, c="w", edgecolors="k", zorder=3, label="Y1")
        if iso.get("extra") is not None:
            ax.scatter(*iso["extra"][0], marker="^", s=55, c="w", edgecolors="k", zorder=3, label="attacked")
        ax.legend(fontsize=6, loc="best", framealpha=0.8)
    ax.set_title(f"{variant}: isomap of {len(labels)} test images (filled Y10, hollow Y1)", fontsize=8)
    ax.tick_params(labelsize=6)


def figure2(variants: list[str], church: dict, iso: dict, path: Path) -> Path:
    """Church window (left) and isomap (right), one row per model."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(variants), 2, figsize=(9.0, 4.2 * len(variants)), squeeze=False)
    for row, v in zip(axes, variants):
        church_panel(row[0], v, church.get(v))
        isomap_panel(row[1], v, iso.get(v))
    _class_legend(axes[0][1], loc="upper right")
    fig.tight_layout()
    return plots.save(fig, path)[0]


def side_by_side(variants: list[str], panels: dict, draw, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(variants), figsize=(4.6 * len(variants), 4.2), squeeze=False)
    for ax, v in zip(axes[0], variants):
        draw(ax, v, panels.get(v))
    _class_legend(axes[0][-1], loc="upper right")
    fig.tight_layout()
    return plots.save(fig, path)[0]


def distances(per_image: dict, path: Path) -> Path:
    """Histograms of the Table 2 distances, one panel per kind, the models overlaid."""
    import matplotlib.pyplot as plt

    kinds = (("y10_y1", "Y10 to Y1"), ("y10_attacked", "Y10 to attacked"))
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for ax, (kind, label) in zip(axes, kinds):
        values = [d[kind] for d in per_image.values() if len(d[kind])]
        top = max((float(v.max()) for v in values), default=1.0)
        bins = np.linspace(0.0, top * 1.05 or 1.0, 21)
        for v, d in per_image.items():
            if len(d[kind]):
                ax.hist(d[kind], bins=bins, histtype="step", lw=1.6,
                        label=f"{v}: {np.mean(d[kind]):.3g} ± {np.std(d[kind]):.3g} (n={len(d[kind])})")
        ax.set_xlabel(f"latent distance, {label}")
        ax.set_ylabel("flipped images")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return plots.save(fig, path)[0]


def exposure(result: dict, test_accuracy: dict, y1_years: float, path: Path, over_seeds: dict | None = None) -> Path:
    """Accuracy against exposure time (years = 10 f), per model; the Y1 and Y10 test accuracies as
    hollow markers, the Y1 and Y10 exposures as dotted lines. With ``over_seeds`` (analysis.json's,
    more than one seed) the band is the mean +- std over the seeds' models."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for v, acc in result["accuracy"].items():
        line, = ax.plot(result["years"], acc, "o-", label=f"{v} (re-observed)")
        band = ((over_seeds or {}).get("models", {}).get(v) or {}).get("exposure")
        if band and len(over_seeds["seeds"]) > 1:
            mean = np.array([np.nan if b["mean"] is None else b["mean"] for b in band["accuracy"]])
            std = np.array([np.nan if b["std"] is None else b["std"] for b in band["accuracy"]])
            ax.fill_between(band["years"], mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0,
                            label=f"{v}: mean ± std over {len(over_seeds['seeds'])} seeds")
        if v in test_accuracy:
            ax.plot([y1_years, 10.0], test_accuracy[v], "s", mfc="none", mec=line.get_color(), ms=8,
                    label=f"{v}: Y1, Y10 test sets")
    for x, name in ((y1_years, "Y1"), (10.0, "Y10")):
        ax.axvline(x, ls=":", c="0.5")
        ax.text(x, 1.01, name, ha="center", va="bottom", fontsize=7, transform=ax.get_xaxis_transform())
    ax.set_xlabel("exposure (survey years)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return plots.save(fig, path)[0]


def success_vs_k(result: dict, path: Path) -> Path:
    """Fraction of the attacked images flipped against k, per model."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.4, 3.3))
    for v, frac in result["flipped_fraction"].items():
        pts = [(k, f) for k, f in zip(result["k"], frac) if f is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=v)
    if result["missing_k"]:
        ax.set_title(f"no current attack for k = {', '.join(map(str, result['missing_k']))}", fontsize=8)
    ax.set_xlabel("pixels changed (k)")
    ax.set_ylabel("images flipped (fraction of attacked)")
    ax.set_ylim(0, 1.02)
    if result["k"]:
        ax.set_xticks(sorted(set(result["k"])))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return plots.save(fig, path)[0]


def success_vs_queries(methods: dict, path: Path) -> Path:
    """Fraction of the attacked images flipped against the query budget: a panel per value range
    (rows) and model (columns), a step curve per method, the exhaustive oracle as a horizontal line."""
    import matplotlib.pyplot as plt

    ranges = methods["ranges"]
    names = list(ranges) or ["data"]
    models = list(next(iter(ranges.values()))["models"]) if ranges else []
    fig, axes = plt.subplots(len(names), max(1, len(models)), figsize=(4.2 * max(1, len(models)), 3.2 * len(names)),
                             squeeze=False)
    for r, name in enumerate(names):
        for c, model in enumerate(models):
            ax = axes[r][c]
            rows = ranges[name]["models"][model]
            for method, row in rows.items():
                if method == "exhaustive":
                    frac = row["flipped"] / row["attacked"] if row["attacked"] else 0.0
                    ax.axhline(frac, color="k", ls="--", lw=1, label=f"oracle (exhaustive): {row['flipped']}")
                    continue
                q, f = row["curve"]["queries"], row["curve"]["flipped_fraction"]
                end = max(row["budget"] or 1, q[-1] if q else 1)
                ax.step([1, *q, end], [0.0, *f, f[-1] if f else 0.0], where="post",
                        label=f"{method}: {row['flipped']}")
            ax.set_xscale("log")
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{model}, values in {name} range" if name == "data" else f"{model}, values in {name}",
                         fontsize=9)
            ax.set_xlabel("model queries per attack")
            ax.set_ylabel("images flipped (fraction of attacked)")
            ax.legend(fontsize=7, title="method: images flipped", title_fontsize=7)
    fig.tight_layout()
    return plots.save(fig, path)[0]


def _over_seeds(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, sample std (ddof 1; 0 with one seed: nothing to show) and count over seeds (axis 0),
    NaN entries (a seed without that number) left out."""
    n = np.sum(~np.isnan(rows), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(np.where(n > 0, rows, 0.0), axis=0) if rows.size else np.zeros(0)
        mean = np.where(n > 0, mean, np.nan)
        dev = np.where(np.isnan(rows), 0.0, rows - mean) ** 2
        std = np.where(n > 1, np.sqrt(dev.sum(axis=0) / np.maximum(n - 1, 1)), 0.0)
    return mean, std, n


def robustness(by_k: dict, by_budget: dict, path: Path, budget: float | None = None) -> Path:
    """Attack success beyond the paper, one figure, two panels: the fraction of the attacked images
    flipped against the number of pixels k (left) and against the query budget (right), per model,
    the mean over training seeds with the sample std over seeds (ddof 1) as error bars and a band.

    by_k: {variant: [per seed {k: flipped fraction}]}; a k a seed lacks is left out of that k's mean.
    by_budget: {variant: [per seed (queries, attacked)]}: ``queries`` the queries at which each flipped
        image was first flipped (``queries.first_flip_queries``' finite values), ``attacked`` the
        images attacked; a seed's curve at budget q is (#queries <= q) / attacked
        (``queries.within_budget``), evaluated at every budget any seed's curve steps at.
    budget: the right end of the budget axis (the attack's budget); default the largest query seen.
    """
    import matplotlib.pyplot as plt

    from .queries import within_budget

    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.6))
    colours, all_k = {}, set()
    for v, seeds in by_k.items():
        ks = sorted({int(k) for s in seeds for k in s})
        rows = np.array([[s.get(k, s.get(str(k), np.nan)) for k in ks] for s in seeds], np.float64).reshape(len(seeds),
                                                                                                        len(ks))
        mean, std, n = _over_seeds(rows)
        line = left.errorbar(ks, mean, yerr=std, fmt="o-", capsize=3, label=f"{v} ({len(seeds)} seeds)")
        colours[v] = line[0].get_color()
        all_k.update(ks)
    if all_k:
        left.set_xticks(sorted(all_k))
    left.set_xlabel("pixels changed (k)")
    left.set_ylabel("images flipped (fraction of attacked)")
    left.set_ylim(0, 1.02)
    left.legend(fontsize=7)

    found = [float(q) for seeds in by_budget.values() for queries, _ in seeds for q in np.ravel(queries)]
    end = float(budget or max(found, default=1.0))
    grid = np.unique(np.concatenate([[1.0], np.asarray(found, np.float64), [max(end, 1.0)]]))
    for v, seeds in by_budget.items():
        rows = np.array([within_budget(q, int(a), grid) for q, a in seeds], np.float64).reshape(len(seeds), len(grid))
        mean, std, n = _over_seeds(rows)
        kw = {"color": colours[v]} if v in colours else {}
        line, = right.step(grid, mean, where="post", label=f"{v} ({len(seeds)} seeds)", **kw)
        right.fill_between(grid, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), step="post", alpha=0.25,
                           color=line.get_color(), lw=0)
    # Limits set, not read from the curves: a model with nothing attacked draws only NaN, and a log
    # axis cannot take its limits from no data.
    right.set_xscale("log")
    right.set_xlim(1.0, max(end, 2.0))
    right.set_xlabel("query budget per attack (model queries)")
    right.set_ylabel("images flipped within the budget")
    right.set_ylim(0, 1.02)
    right.legend(fontsize=7)
    fig.suptitle("Attack success: mean over training seeds, ± std over seeds", fontsize=9)
    fig.tight_layout()
    return plots.save(fig, path)[0]


def reliability(calibration: dict, path: Path) -> Path:
    """Reliability diagram: a panel per test set (Y10, Y1), a line per variant through each non-empty
    confidence bin's (mean confidence, accuracy), the seeds' images pooled; the diagonal is perfect
    calibration. The legend gives each variant's ECE, mean ± std over seeds.

    calibration: analysis.json's ``calibration`` (:func:`.seeds.calibration`).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.0, 4.0), sharey=True)
    for ax, (domain, label) in zip(axes, (("y10", "Y10"), ("y1", "Y1"))):
        ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="perfectly calibrated")
        for v, per in calibration["variants"].items():
            r = per[domain]["reliability"]
            pts = [(c, a) for c, a in zip(r["confidence"], r["accuracy"]) if c is not None]
            e = per[domain]["ece"]
            text = "–" if e is None else f"{e['mean']:.3f}" + ("" if e["std"] is None else f" ± {e['std']:.3f}")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=4, label=f"{v}: ECE {text}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence (largest class probability)")
        ax.set_title(f"{label} test set", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("accuracy in the bin")
    fig.suptitle(f"Reliability: {calibration['bins']} equal-width confidence bins, seeds "
                 f"{', '.join(map(str, calibration['seeds']))} pooled", fontsize=9)
    fig.tight_layout()
    return plots.save(fig, path)[0]


def robustness_vs_accuracy(comparison: dict, path: Path) -> Path:
    """One-pixel success against Y1 test accuracy, one point per variant and training seed, a panel
    per value range of the k = 1 attacks: filled where the fraction is exact (certified, or the
    exhaustive search), hollow where it is the search's own (a lower bound).

    comparison: analysis.json's ``comparison`` (:mod:`.comparison`).
    """
    import matplotlib.pyplot as plt

    ranges = comparison["ranges"] or ["data"]
    fig, axes = plt.subplots(1, len(ranges), figsize=(4.6 * len(ranges), 3.8), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes[0], ranges):
        drawn = 0
        for i, v in enumerate(comparison["variants"]):
            row = comparison["rows"][v]
            k1, acc = row["one_pixel"].get(name), row["accuracy_y1"]
            if k1 is None or acc is None:
                continue
            exact = k1["exact"] is not None
            y = k1["exact"] if exact else k1["search"]
            by_seed = dict(zip(acc["seeds"], acc["values"]))
            pts = [(by_seed[s], f) for s, f in zip(y["seeds"], y["values"]) if s in by_seed]
            colour = colours[i % len(colours)]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=36, color=colour if exact else "none",
                       edgecolors=colour, label=f"{v} ({len(pts)} seeds)")
            drawn += len(pts)
        if not drawn:
            ax.text(0.5, 0.5, "no attacked variant", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("Y1 test accuracy")
        ax.set_ylabel("images one pixel flips (fraction of attacked)")
        ax.set_title(f"values in the {name} range" if name == "data" else f"values in {name}", fontsize=9)
        if drawn:
            ax.legend(fontsize=7)
    fig.suptitle("Robustness against Y1 accuracy, a point per variant and seed\n(filled: certified or exhaustive; "
                 "hollow: found by the search)", fontsize=8)
    fig.tight_layout()
    return plots.save(fig, path)[0]
