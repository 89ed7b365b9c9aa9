"""k-pixel candidates: the genome layout, and candidate images built and classified in batches.

A candidate sets k pixels of a normalised image (the model's input space, after the asinh
stretch). Its genome holds, per pixel, the column x and row y (continuous, in pixels, in
[0, W) and [0, H); the pixel is ``floor``) and one value per band (normalised units, within
``attack.pixel_range``): D = k (2 + C) genes. Pixel j's genes are ``[x, y, v_1 .. v_C]`` at
offset j (2 + C).

:class:`PixelObjective` is the objective of a batch of attacks (any method): it builds every candidate image
on the model's device from the attacks' base images and runs the model on them in forward passes
of at most ``forward_batch`` images.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch


def bounds(pixels: int, bands: int, height: int, width: int, value_range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, is_position) of the genome, each (D,).

    value_range: (low, high) for every band, or per-band lists ``(lows, highs)``.
    """
    lo_v, hi_v = (np.broadcast_to(np.asarray(v, np.float64), (bands,)) for v in value_range)
    lower = np.concatenate([[0.0, 0.0], lo_v])
    upper = np.concatenate([[float(width), float(height)], hi_v])
    is_position = np.zeros(2 + bands, bool)
    is_position[:2] = True
    return np.tile(lower, pixels), np.tile(upper, pixels), np.tile(is_position, pixels)


def decode(genomes, pixels: int, height: int, width: int):
    """Genomes (..., D) -> (x (..., k) long, y (..., k) long, values (..., k, C) float32).

    Works on numpy arrays and torch tensors alike (torch in, torch out).
    """
    is_torch = isinstance(genomes, torch.Tensor)
    g = genomes if is_torch else torch.from_numpy(np.asarray(genomes, np.float64))
    g = g.reshape(*g.shape[:-1], pixels, -1)
    x = g[..., 0].floor().clamp(0, width - 1).long()
    y = g[..., 1].floor().clamp(0, height - 1).long()
    values = g[..., 2:].float()
    if is_torch:
        return x, y, values
    return x.numpy(), y.numpy(), values.numpy()


def apply(images: torch.Tensor, x: torch.Tensor, y: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Set pixels in place: images (N, C, H, W); x, y (N, k); values (N, k, C). Returns ``images``.

    Pixels are written in order j = 0 .. k-1, so when two of a candidate's pixels coincide the
    later one wins (a single scatter with repeated indices has no defined winner).
    """
    rows = torch.arange(images.shape[0], device=images.device)
    for j in range(x.shape[1]):
        images[rows, :, y[:, j], x[:, j]] = values[:, j]
    return images


def forward_probs(logits_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (N, K) of images x (N, C, H, W), float32, on x's device.

    A lone image is run as a pair (itself twice): with one row, BLAS switches to a
    matrix-vector kernel whose last bits differ, and an image's probabilities must not depend on
    how many images share its forward pass.
    """
    if x.shape[0] == 1:
        return torch.softmax(logits_fn(torch.cat([x, x])).float(), 1)[:1]
    return torch.softmax(logits_fn(x).float(), 1)


def forward_logits(logits_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits (N, K) of images x (N, C, H, W), float32, on x's device; a lone image is run as a pair
    (see :func:`forward_probs`)."""
    if x.shape[0] == 1:
        return logits_fn(torch.cat([x, x])).float()[:1]
    return logits_fn(x).float()


class PixelObjective:
    """The objective for a batch of attacks on one model (every method's, see :mod:`hpcmorph.attack.methods`).

    logits_fn: images (N, C, H, W) on ``base.device`` -> logits (N, K), e.g. ``lambda x: model(x)[1]``.
    base: (n, C, H, W) the attacks' normalised images, on the model's device.
    pixels: k. forward_batch: most images per forward pass (bounds memory; the split does not change
    any result). logits: answer the model's logits (float64 copies of its float32 logits) instead of
    the class probabilities (for the margin loss, :mod:`.goal`).

    ``queries`` counts candidate images classified; ``forward_seconds`` the time inside the model
    (synchronised on GPUs), so that the attack's model throughput can be set beside bare inference.
    """

    def __init__(self, logits_fn, base: torch.Tensor, pixels: int, forward_batch: int = 1024, logits: bool = False):
        self.logits_fn, self.base, self.pixels, self.forward_batch = logits_fn, base, pixels, forward_batch
        self.logits = logits
        self.height, self.width = base.shape[-2:]
        self.queries, self.calls, self.forward_seconds = 0, 0, 0.0

    @torch.inference_mode()
    def __call__(self, tasks: torch.Tensor, genomes: torch.Tensor) -> torch.Tensor:
        m, p, d = genomes.shape
        flat = genomes.reshape(m * p, d)
        rows = tasks.repeat_interleave(p)
        x, y, v = decode(flat, self.pixels, self.height, self.width)
        dev = self.base.device
        x, y, v, rows = x.to(dev), y.to(dev), v.to(dev), rows.to(dev)
        out = []
        for a in range(0, m * p, self.forward_batch):
            b = min(m * p, a + self.forward_batch)
            # Build only this chunk's images: memory stays at forward_batch images.
            imgs = apply(self.base.index_select(0, rows[a:b]), x[a:b], y[a:b], v[a:b])
            out.append(self._answer(rows[a:b], imgs))
        self.queries += m * p
        self.calls += 1
        return torch.cat(out).double().cpu().reshape(m, p, -1)

    def _answer(self, rows: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The model's answer (probabilities or logits, float32) for candidate ``images`` of the objective
        rows ``rows``, timed."""
        t0 = time.perf_counter()
        out = (forward_logits if self.logits else forward_probs)(self.logits_fn, images)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.forward_seconds += time.perf_counter() - t0
        return out
