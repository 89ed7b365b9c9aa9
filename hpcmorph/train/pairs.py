"""Two batches of latents, one from each exposure: the arguments every domain term (:mod:`.mmd`,
:mod:`.coral`, :mod:`.sinkhorn`) takes, checked in one place."""

from __future__ import annotations

import torch


def check_pair(term: str, x, y, min_points: int = 1, why: str = "") -> None:
    """Raise a ValueError naming ``term`` unless ``x`` (n, d) and ``y`` (m, d) are latent tensors with at
    least ``min_points`` rows each (``why`` says why that many), one latent dimension, dtype and device."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[0] < min_points:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{term}: {name} must be a tensor of latents shaped (n, d) with n >= {min_points}{why}, "
                             f"got {shape}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{term}: x and y must have the same latent dimension, got {x.shape[1]} and {y.shape[1]}")
    if x.dtype != y.dtype or x.device != y.device:
        raise ValueError(f"{term}: x and y must share dtype and device, got {x.dtype} on {x.device} "
                         f"and {y.dtype} on {y.device}")
