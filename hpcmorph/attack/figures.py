"""What ``attack`` shows a person, next to its output in ``figures/``.

- ``<stem>_queries.png``: histogram of the model queries each successful attack needed, per model;
- ``<stem>_success.png``: success rate by true class (rows) and target (columns), per model;
- ``<stem>_examples.png``: a few successful attacks, the changed pixel circled;
- ``attack_success_vs_k.png`` (``attack-untargeted_success_vs_k.png``; ``attack-<method>...`` for
  methods other than DE): success rate against the number of pixels k, from every ``attack*.h5`` of
  the run in the same mode and method (one point until attacks with other k exist).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from .. import plots
from ..generate.classes import CLASS_NAMES
from ..mpi import log


def _read(path: Path) -> tuple[dict, dict]:
    with h5py.File(path, "r") as f:
        cols = {name: f[name][...] for name in f if name != "attacked"}
        attrs = {k: f.attrs[k] for k in ("mode", "pixels", "population", "generations", "variant_names", "summary")}
        attrs["method"] = str(f.attrs.get("method", "de"))
        attrs["budget"] = int(f.attrs.get("budget", int(attrs["population"]) * (int(attrs["generations"]) + 1)))
    attrs["variants"] = str(attrs["variant_names"]).split(",")
    return cols, attrs


def queries_histogram(cols: dict, attrs: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    budget = attrs["budget"]
    bins = np.linspace(0, budget, min(41, int(attrs["generations"]) + 2) if attrs["method"] == "de" else 41)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for v, name in enumerate(attrs["variants"]):
        sel = cols["variant"] == v
        ok = sel & cols["success"]
        ax.hist(cols["queries"][ok], bins=bins, histtype="step", lw=1.6,
                label=f"{name}: {ok.sum()} of {sel.sum()} attacks succeeded")
    ax.set_xlabel(f"model queries to success (budget {budget:,})")
    ax.set_ylabel("attacks")
    ax.set_title(f"{attrs['mode']} {int(attrs['pixels'])}-pixel attack ({attrs['method']})", fontsize=9)
    ax.legend(fontsize=7)
    return plots.save(fig, path)[0]


def success_matrix(attrs: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    summary = json.loads(attrs["summary"])["variants"]
    names = attrs["variants"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        by = summary[name]["success_by_class_and_target"]
        cols = list(CLASS_NAMES) if attrs["mode"] == "targeted" else ["any"]
        rate = np.full((len(CLASS_NAMES), len(cols)), np.nan)
        for i, cls in enumerate(CLASS_NAMES):
            for j, tgt in enumerate(cols):
                won, tried = by.get(cls, {}).get(tgt, (0, 0))
                if tried:
                    rate[i, j] = won / tried
                    ax.text(j, i, f"{won}/{tried}", ha="center", va="center", fontsize=8,
                            color="w" if won / tried < 0.6 else "k")
        ax.imshow(rate, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(cols)), cols, fontsize=7)
        ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=7)
        ax.set_xlabel("target")
        ax.set_ylabel("true class")
        ax.set_title(f"{name}: {summary[name]['flipped']} of {summary[name]['attacked']} images flipped", fontsize=8)
    return plots.save(fig, path)[0]


def examples(path_h5: Path, cols: dict, attrs: dict, path: Path, n: int = 4) -> Path | None:
    """Up to ``n`` successful attacks, on the first model if it has any: the attacked image (g, r, i
    as blue, green, red, shown over the normalised range of real pixels) with the changed pixel(s)
    circled."""
    import matplotlib.pyplot as plt

    picks = np.flatnonzero(cols["success"] & (cols["variant"] == 0))[:n]
    if len(picks) == 0:
        picks = np.flatnonzero(cols["success"])[:n]
    if len(picks) == 0:
        return None
    fig, axes = plt.subplots(1, len(picks), figsize=(2.6 * len(picks), 2.9), squeeze=False)
    with h5py.File(path_h5, "r") as f:
        for ax, r in zip(axes[0], picks):
            img = f["attacked"][r]
            # Normalised pixels live in about [0.46, 0.886]: stretch that span to the screen.
            rgb = np.clip((np.moveaxis(img[::-1], 0, -1) - 0.46) / (0.886 - 0.46), 0, 1)
            ax.imshow(rgb, origin="lower")
            for x, y in cols["pixel_xy"][r]:
                ax.add_patch(plt.Circle((x, y), max(2.0, img.shape[-1] / 25), fill=False, color="cyan", lw=1.2))
            t = int(cols["target"][r])
            goal = CLASS_NAMES[t] if t >= 0 else "any"
            pb, pa = cols["prob_before"][r], cols["prob_after"][r]
            shown = t if t >= 0 else int(cols["pred_after"][r])
            model = attrs["variants"][int(cols["variant"][r])]
            ax.set_title(f"{model}: {CLASS_NAMES[int(cols['label'][r])]} -> {goal}\n"
                         f"p({CLASS_NAMES[shown]}) {pb[shown]:.2f} -> {pa[shown]:.2f}, "
                         f"{int(cols['queries'][r])} queries", fontsize=7)
            ax.set_axis_off()
    return plots.save(fig, path)[0]


def success_vs_k(run_dir: Path, mode: str, path: Path, method: str = "de") -> Path | None:
    """Success rate against k from every attack output of this mode and method in ``run_dir``."""
    import matplotlib.pyplot as plt

    points: dict[str, list[tuple[int, float]]] = {}
    for h5 in sorted(run_dir.glob("attack*.h5")):
        try:
            with h5py.File(h5, "r") as f:
                if f.attrs.get("stage") != "attack" or f.attrs.get("mode") != mode \
                        or str(f.attrs.get("method", "de")) != method:
                    continue
                k, summary = int(f.attrs["pixels"]), json.loads(f.attrs["summary"])["variants"]
        except (OSError, KeyError, ValueError):
            continue
        for name, s in summary.items():
            if s["success_rate"] is not None:
                points.setdefault(name, []).append((k, s["success_rate"]))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    for name, pts in points.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
    ax.set_xlabel("pixels changed (k)")
    ax.set_ylabel("attack success rate")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{mode} attacks", fontsize=9)
    ax.legend(fontsize=7)
    return plots.save(fig, path)[0]


def _vs_k_name(attrs: dict) -> str:
    method = "" if attrs["method"] == "de" else f"-{attrs['method']}"
    return f"attack{method}{'' if attrs['mode'] == 'targeted' else '-untargeted'}_success_vs_k.png"


def write_figures(output: Path) -> list[Path]:
    """Every figure of one attack output; returns the files written."""
    output = Path(output)
    figures = output.parent / "figures"
    cols, attrs = _read(output)
    stem = output.stem
    written = [queries_histogram(cols, attrs, figures / f"{stem}_queries.png"),
               success_matrix(attrs, figures / f"{stem}_success.png"),
               examples(output, cols, attrs, figures / f"{stem}_examples.png"),
               success_vs_k(output.parent, str(attrs["mode"]), figures / _vs_k_name(attrs), attrs["method"])]
    written = [w for w in written if w is not None]
    log.info("attack figures: %s", ", ".join(str(w) for w in written))
    return written
