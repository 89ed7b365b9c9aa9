"""Church windows: the classes of a plane through the latent space, spanned by the attack and the noise.

For one galaxy, with z0 its Y10 latent, adv = z_attacked - z0 and noise = z_Y1 - z0 (the paper's raw
directions, not orthogonalised), the point (x, y) of the plot is z0 + x adv + y noise, coloured by
the class the model's linear head gives it. So the Y10 image sits at (0, 0), the attacked image at
(1, 0) and the Y1 image at (0, 1): the axes are in units of each perturbation's own length.

``orthogonal=True`` draws the traditional church window instead (Warde-Farley & Goodfellow): the
noise direction is Gram-Schmidt'ed against adv and rescaled to |noise|, so the Y1 image lands at
its projected coordinates (noise.adv / |adv|^2, |noise_perp| / |noise|) rather than at (0, 1).

The head is linear, so every class region is a convex polygon.
"""

from __future__ import annotations

import numpy as np

# Most grid points classified at once: n x 256 float64 latents, two such arrays at the peak (about
# 1 GB at the limit; the paper's 221 x 221 grid takes 200 MB).
MAX_POINTS = 250_000


def axis(extent: float, step: float) -> np.ndarray:
    """Grid coordinates from -extent to extent (both included, centred on 0) in steps of ``step``."""
    half = int(round(extent / step))
    return np.arange(-half, half + 1, dtype=np.float64) * step


def directions(z0: np.ndarray, z_y1: np.ndarray, z_attacked: np.ndarray, orthogonal: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """(adv, noise) spanning the window, float64 (D,) each (see the module docstring)."""
    z0 = np.asarray(z0, np.float64)
    adv = np.asarray(z_attacked, np.float64) - z0
    noise = np.asarray(z_y1, np.float64) - z0
    if orthogonal:
        aa = float(adv @ adv)
        perp = noise - (float(noise @ adv) / aa) * adv if aa > 0 else noise
        norm_perp = float(np.linalg.norm(perp))
        # A noise direction parallel to the attack's spans no plane: keep it as it is.
        if norm_perp > 1e-12 * max(1.0, float(np.linalg.norm(noise))):
            noise = perp * (float(np.linalg.norm(noise)) / norm_perp)
    return adv, noise


def markers(z0: np.ndarray, z_y1: np.ndarray, z_attacked: np.ndarray, adv: np.ndarray, noise: np.ndarray
            ) -> dict[str, tuple[float, float]]:
    """Plot coordinates (x, y) of the Y10, Y1 and attacked latents in the plane z0 + x adv + y noise
    (least squares; exact when the point lies in the plane, as these three do)."""
    basis = np.stack([adv, noise], 1)  # (D, 2)
    z0 = np.asarray(z0, np.float64)

    def coords(z):
        xy, *_ = np.linalg.lstsq(basis, np.asarray(z, np.float64) - z0, rcond=None)
        return float(xy[0]), float(xy[1])

    return {"y10": (0.0, 0.0), "y1": coords(z_y1), "attacked": coords(z_attacked)}


def grid_classes(weight: np.ndarray, bias: np.ndarray, z0: np.ndarray, adv: np.ndarray, noise: np.ndarray,
                 xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Classes (len(ys), len(xs)) int8 of the points z0 + x adv + y noise for every x in ``xs`` and y in
    ``ys`` (row i is y = ys[i]), under the linear head logits = weight @ z + bias.

    weight: (K, D), bias: (K,), z0, adv, noise: (D,). The whole grid is one matrix product in
    float64: no loop over points.
    """
    n = len(xs) * len(ys)
    if n > MAX_POINTS:
        raise ValueError(f"church window of {len(xs)} x {len(ys)} = {n} points is over {MAX_POINTS}: "
                         "raise analyze.church_step or lower analyze.church_extent")
    w, b = np.asarray(weight, np.float64), np.asarray(bias, np.float64)
    gx, gy = np.meshgrid(np.asarray(xs, np.float64), np.asarray(ys, np.float64))
    # z0 + x adv + y noise, in that order of additions (IEEE addition commutes exactly), in place.
    z = gx.reshape(-1, 1) * np.asarray(adv, np.float64)[None, :]  # (n, D)
    z += np.asarray(z0, np.float64)[None, :]
    z += gy.reshape(-1, 1) * np.asarray(noise, np.float64)[None, :]
    logits = z @ w.T + b
    return logits.argmax(1).astype(np.int8).reshape(len(ys), len(xs))


def window(weight, bias, z0, z_y1, z_attacked, extent: float, step: float, orthogonal: bool = False) -> dict:
    """Everything a church-window panel draws: {"xs", "ys", "classes" (len(ys), len(xs)), "markers"}."""
    adv, noise = directions(z0, z_y1, z_attacked, orthogonal)
    xs = ys = axis(extent, step)
    return {"xs": xs, "ys": ys, "classes": grid_classes(weight, bias, z0, adv, noise, xs, ys),
            "markers": markers(z0, z_y1, z_attacked, adv, noise),
            "norm_adv": float(np.linalg.norm(adv)), "norm_noise": float(np.linalg.norm(noise))}
