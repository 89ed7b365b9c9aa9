"""Shared plotting conventions: the paper's class colours, an asinh RGB stretch, atomic saving."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import store  # noqa: E402

# The paper's class colours (Figure 2): spiral, elliptical, merger.
CLASS_COLOURS = ("#FFA600", "#BC5090", "#003F5C")


def asinh_rgb(images: np.ndarray, scale: float | None = None, softening: float = 0.05) -> np.ndarray:
    """An (H, W, 3) RGB picture of (3, H, W) g, r, i images (i -> red, r -> green, g -> blue).

    Pixels go through asinh(x / (softening * scale)), normalised so ``scale`` maps to 1. Pass the
    same ``scale`` to show several images (Y10 beside Y1) on one stretch; by default it is the
    99.5th percentile of the image.
    """
    x = np.asarray(images, dtype=np.float64)[::-1]
    if scale is None:
        scale = float(np.nanpercentile(x, 99.5)) or 1.0
    soft = softening * scale
    rgb = np.arcsinh(np.clip(x, 0.0, None) / soft) / np.arcsinh(scale / soft)
    return np.clip(np.moveaxis(rgb, 0, -1), 0.0, 1.0)


def save(fig, path: Path, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Save ``fig`` as ``path`` with each suffix in ``formats`` (PNG to look at, PDF for papers), each
    written then renamed; returns the paths, PNG first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = path.with_suffix("." + fmt)
        with store.atomic(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight")
        written.append(target)
    plt.close(fig)
    return written
