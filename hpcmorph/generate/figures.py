"""What ``generate`` shows a person: a Figure-1 mosaic, the G-M20 plane, a class-count table."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np

from .. import plots, store
from ..mpi import log
from .dataset import SPLIT_NAMES
from .morphology import CLASS_NAMES


def figure1(f: h5py.File, path: Path) -> Path | None:
    """Y10 beside Y1 for one galaxy of each class (the first typical un-augmented test galaxy of each)."""
    import matplotlib.pyplot as plt

    label, split, aug, intended = f["label"][...], f["split"][...], f["augmentation"][...], f["intended"][...]
    # Prefer galaxies whose G-M20 label agrees with what the generator meant: typical of the class.
    typical = (intended == label) | (intended < 0)
    picks = []
    for cls in range(3):
        rows = np.flatnonzero((label == cls) & (aug == 0) & (split == 2) & typical)
        rows = rows if len(rows) else np.flatnonzero((label == cls) & (aug == 0))
        if len(rows):
            picks.append((cls, int(rows[0])))
    if not picks:
        return None
    fig, axes = plt.subplots(1, 2 * len(picks), figsize=(2.4 * 2 * len(picks), 2.8), squeeze=False)
    for k, (cls, row) in enumerate(picks):
        y10, y1 = f["y10"][row], f["y1"][row]
        scale = float(np.percentile(y10, 99.5)) or 1.0
        for j, (img, name) in enumerate(((y10, "Y10"), (y1, "Y1"))):
            ax = axes[0, 2 * k + j]
            ax.imshow(plots.asinh_rgb(img, scale=scale), origin="lower")
            ax.set_title(f"{CLASS_NAMES[cls]} {name}", color=plots.CLASS_COLOURS[cls], fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Same galaxy after ten years (Y10) and one year (Y1) of LSST: g, r, i, asinh stretch", fontsize=9)
    return plots.save(fig, path)[0]


def gm20_plane(f: h5py.File, path: Path) -> Path:
    """Every parent in the Gini-M20 plane, coloured by its label, with the Lotz et al. lines."""
    import matplotlib.pyplot as plt

    first = f["augmentation"][...] == 0
    gini, m20, label = f["gini"][...][first], f["m20"][...][first], f["label"][...][first]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for cls, name in enumerate(CLASS_NAMES):
        sel = label == cls
        ax.scatter(m20[sel], gini[sel], s=8, alpha=0.7, color=plots.CLASS_COLOURS[cls], label=f"{name} ({sel.sum()})")
    x = np.linspace(-3.2, 0.0, 50)
    merger_line = (0.327 - 0.139 * x) / 0.990          # S = 0
    bulge_line = (3.96 + 0.693 * x) / 4.95             # F = 0
    ax.plot(x, merger_line, "k-", lw=1, label="S = 0 (mergers above)")
    below = bulge_line < merger_line
    ax.plot(x[below], bulge_line[below], "k--", lw=1, label="F = 0 (ellipticals above)")
    ax.set_xlim(0.0, -3.2)
    ax.set_xlabel("M20")
    ax.set_ylabel("Gini")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("Labels from the G-M20 plane (noiseless images)", fontsize=9)
    return plots.save(fig, path)[0]


def class_table(f: h5py.File, path: Path) -> Path:
    """Counts per split and class (rows include augmented copies), as CSV."""
    label, split = f["label"][...], f["split"][...]
    with store.atomic(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["split", *CLASS_NAMES, "total"])
        for code, name in enumerate(SPLIT_NAMES):
            counts = [int(np.sum((split == code) & (label == c))) for c in range(3)]
            w.writerow([name, *counts, sum(counts)])
        counts = [int(np.sum((split >= 0) & (label == c))) for c in range(3)]
        w.writerow(["all", *counts, sum(counts)])
    return path


def write_figures(output: Path) -> list[Path]:
    """All of the above, next to the output file, in ``figures/``."""
    folder = Path(output).parent / "figures"
    with h5py.File(output, "r") as f:
        written = [figure1(f, folder / "generate_figure1.png"), gm20_plane(f, folder / "generate_gm20.png"),
                   class_table(f, folder / "generate_class_counts.csv")]
        with open(written[-1]) as fh:
            log.info("class counts (rows, incl. augmented mergers):\n%s", fh.read().rstrip())
        if "label_agreement" in f.attrs:
            log.info("G-M20 label agrees with the intended class for %.1f%% of parents; confusion "
                     "(rows intended, columns G-M20):\n%s", 100 * f.attrs["label_agreement"],
                     f.attrs["label_confusion_intended_by_gm20"])
    return [p for p in written if p is not None]
