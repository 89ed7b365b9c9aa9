"""Training data from ``galaxies.h5``: each rank's shard of the training split, in memory.

The training rows are dealt once into equal per-rank shards (a permutation seeded from the
training seed; the few rows left over by the division are dropped), so every rank takes the same
number of steps per epoch. Each epoch shuffles a shard with a generator seeded from
(seed, epoch, stream): Y10 batches and Y1 batches are independent streams.

Only the labels of the labelled Y10 rows are ever read; the Y1 images come without labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

from ..generate.dataset import TEST, TRAIN, VALIDATION

Y10_STREAM, Y1_STREAM, SHARD_STREAM, SUBSAMPLE_STREAM = 0, 1, 2, 3


@dataclass
class Shard:
    """One rank's training images (raw, e-/s per pixel) and the labels of the Y10 ones."""

    y10: np.ndarray
    labels: np.ndarray
    y1: np.ndarray | None

    def __len__(self) -> int:
        return len(self.labels)


def split_rows(f: h5py.File) -> dict[int, np.ndarray]:
    split = f["split"][...]
    return {code: np.flatnonzero(split == code) for code in (TRAIN, VALIDATION, TEST)}


def training_rows(f: h5py.File, seed: int, max_images: int = 0) -> np.ndarray:
    """The training rows, optionally a deterministic subsample of ``max_images`` (sorted)."""
    rows = split_rows(f)[TRAIN]
    if max_images and max_images < len(rows):
        pick = np.random.default_rng([seed, SUBSAMPLE_STREAM]).permutation(len(rows))[:max_images]
        rows = np.sort(rows[pick])
    return rows


def shard_rows(rows: np.ndarray, seed: int, rank: int, size: int) -> np.ndarray:
    per_rank = len(rows) // size
    if per_rank == 0:
        raise ValueError(f"{len(rows)} training images cannot be shared by {size} ranks")
    order = np.random.default_rng([seed, SHARD_STREAM]).permutation(len(rows))
    return np.sort(rows[order[rank * per_rank:(rank + 1) * per_rank]])


def load_shard(f: h5py.File, rows: np.ndarray, with_y1: bool) -> Shard:
    """Read the shard's images (h5py wants increasing row indices: ``rows`` is sorted)."""
    return Shard(y10=f["y10"][rows], labels=f["label"][rows].astype(np.int64),
                 y1=f["y1"][rows] if with_y1 else None)


def batches(n: int, batch: int, seed: int, epoch: int, stream: int) -> list[np.ndarray]:
    """Index batches covering ``range(n)`` in an order fixed by (seed, epoch, stream)."""
    order = np.random.default_rng([seed, epoch, stream]).permutation(n)
    return [order[i:i + batch] for i in range(0, n, batch)]


def class_weights(labels: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """weight_c = N / (n_classes * n_c), as the authors; a class absent from training gets weight 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return np.divide(len(labels), n_classes * counts, out=np.zeros(n_classes), where=counts > 0)
