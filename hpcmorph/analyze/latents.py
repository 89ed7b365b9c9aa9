"""Latent embeddings: each model's 256-d bottleneck output and predicted class, in fixed chunks.

A forward pass's floats can depend on which images share the batch (BLAS and cuDNN pick kernels
by shape), so images are always embedded in the same chunks: chunk c holds rows
``[c * chunk, (c + 1) * chunk)`` of the list being embedded, whatever the number of ranks. Ranks
take chunks round-robin and exchange the results, so the output is the same on any number of ranks.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..mpi import Context


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) bounds of the fixed chunks of ``size`` rows covering ``n`` rows."""
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


def embed(model, images: np.ndarray | torch.Tensor, device: torch.device, stretch=None) -> tuple[np.ndarray, np.ndarray]:
    """(latents (n, latent_dim) float32, predicted classes (n,) int8) of ``images`` (n, C, H, W).

    ``stretch``: the model's ``AsinhStretch`` for raw images (e-/s per pixel); None for images
    already normalised (the attacked images of attack.h5). One forward pass: the caller picks the
    batch (see the module docstring).
    """
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images, np.float32))
    if stretch is not None:
        x = stretch(x)
    if len(x) == 0:
        return np.zeros((0, model.latent_dim), np.float32), np.zeros(0, np.int8)
    model.eval()  # no dropout: a latent is a function of the image alone
    with torch.no_grad():
        latent, logits = model(x.float().to(device))
    return latent.cpu().numpy().astype(np.float32), logits.argmax(1).cpu().numpy().astype(np.int8)


def sharded(ctx: Context, n_chunks: int, work: Callable[[int], dict[str, np.ndarray]], progress=None) -> list[dict]:
    """``work(c)`` for every chunk c, shared round-robin over the ranks; every rank gets every result,
    in chunk order. ``progress``: a tqdm-like bar updated once per chunk of this rank."""
    mine = {}
    for c in ctx.share(range(n_chunks)):
        mine[c] = work(c)
        if progress is not None:
            progress.update(1)
    merged: dict[int, dict] = {}
    for part in ctx.allgather(mine):
        merged.update(part)
    return [merged[c] for c in range(n_chunks)]


def concat(parts: list[dict], empty: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Join per-chunk results along rows; ``empty`` gives each column's (0, ...) array when there are none."""
    return {k: np.concatenate([p[k] for p in parts]) if parts else v for k, v in empty.items()}
