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

from pathlib import Path

import h5py
import numpy as np

from .. import store
from ..errors import StageError, StoreError
from ..generate.dataset import SPLIT_NAMES, TEST, TRAIN, VALIDATION

Y10_STREAM, Y1_STREAM, SHARD_STREAM, SUBSAMPLE_STREAM, Y1_SHARD_STREAM = 0, 1, 2, 3, 4


# What training reads of galaxies.h5: per-row codes, and the images of both exposures (Y1 for the MMD
# pool and for Table 1's Y1 column).
DATASETS = {"split": 1, "label": 1, "y10": 4, "y1": 4}


def open_galaxies(path: Path) -> h5py.File:
    """galaxies.h5, open for reading, checked once at the boundary: every dataset training reads is
    there with one row per galaxy, labels are classes, and no split is empty (an empty validation
    split would stop training at epoch 1; an empty test split would give a Table 1 of NaN)."""
    f = store.open_checked(path, "generate")
    try:
        check_galaxies(f, path)
    except BaseException:
        f.close()
        raise
    return f


def check_galaxies(f: h5py.File, path: Path) -> None:
    missing = [name for name in DATASETS if not isinstance(f.get(name), h5py.Dataset)]
    if missing:
        raise StoreError(f"{path}: no dataset {', '.join(repr(m) for m in missing)}; training reads "
                         f"{', '.join(DATASETS)} (rerun `hpcmorph generate` to remake the file)")
    n = f["split"].shape[0] if f["split"].ndim else None
    for name, ndim in DATASETS.items():
        shape = f[name].shape
        if len(shape) != ndim or shape[0] != n:
            raise StoreError(f"{path}: dataset '{name}' has shape {shape}; expected {ndim} axes and one row per "
                             f"galaxy ({n}, as 'split')")
    if f["y10"].shape != f["y1"].shape:
        raise StoreError(f"{path}: 'y10' {f['y10'].shape} and 'y1' {f['y1'].shape} differ in shape")
    split, label = f["split"][...], f["label"][...]
    used = split >= 0
    wrong = np.flatnonzero(used & ((label < 0) | (label > 2)))
    if len(wrong):
        raise StoreError(f"{path}: row {int(wrong[0])} is in a split but has label {int(label[wrong[0]])}; "
                         "expected 0, 1 or 2")
    for code, name in enumerate(SPLIT_NAMES):
        if not np.any(split == code):
            raise StageError(f"{path}: the {name} split is empty (no row has split == {code}, of {len(split)}); "
                             f"training needs train, validation and test rows: generate more galaxies "
                             "(generate.n_galaxies) or change generate.split")


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
