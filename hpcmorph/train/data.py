"""Training data from ``galaxies.h5``: each rank's shard of the training split, in memory.

Two pools, each dealt once into equal per-rank shards (a permutation seeded from the training
seed; the few rows left over by the division are dropped, so every rank takes the same number of
steps per epoch):

- the labelled Y10 pool: the training rows, or a deterministic subsample of
  ``train.max_train_images`` of them;
- the unlabelled Y1 pool (MMD only): the Y1 images of *all* training rows, read without labels.
  With a labelled subsample this is the realistic case of few labels and many unlabelled images,
  and it is what the test that Y1 labels are never read relies on.

Each epoch shuffles a shard with a generator seeded from (seed, epoch, stream).
"""

from __future__ import annotations


import h5py
import numpy as np

from ..errors import StageError
from ..generate.dataset import TEST, TRAIN, VALIDATION

Y10_STREAM, Y1_STREAM, SHARD_STREAM, SUBSAMPLE_STREAM, Y1_SHARD_STREAM = 0, 1, 2, 3, 4


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


def shard_rows(rows: np.ndarray, seed: int, rank: int, size: int, stream: int = SHARD_STREAM) -> np.ndarray:
    """This rank's equal share of ``rows`` (sorted: h5py reads increasing indices)."""
    per_rank = len(rows) // size
    if per_rank == 0:
        raise StageError(f"{len(rows)} training images cannot be shared by {size} ranks")
    order = np.random.default_rng([seed, stream]).permutation(len(rows))
    return np.sort(rows[order[rank * per_rank:(rank + 1) * per_rank]])


def batches(n: int, batch: int, seed: int, epoch: int, stream: int) -> list[np.ndarray]:
    """Index batches covering ``range(n)`` in an order fixed by (seed, epoch, stream)."""
    order = np.random.default_rng([seed, epoch, stream]).permutation(n)
    return [order[i:i + batch] for i in range(0, n, batch)]


def class_weights(labels: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """weight_c = N / (n_classes * n_c), as the authors; a class absent from training gets weight 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return np.divide(len(labels), n_classes * counts, out=np.zeros(n_classes), where=counts > 0)
