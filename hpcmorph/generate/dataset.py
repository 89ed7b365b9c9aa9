"""From parent galaxies to a dataset: merger augmentation and the train/validation/test split.

Both are functions of the parents' labels and the seed alone, so every rank computes the same plan.
"""

from __future__ import annotations

import numpy as np

from .classes import MERGER

# Augmentations, as the paper: up/down flip and rotations by 90 and 180 degrees (0 = the original).
AUGMENTATIONS = ("none", "flip_ud", "rot90", "rot180")
TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "validation", "test")


def augment(images: np.ndarray, kind: int) -> np.ndarray:
    """Apply augmentation ``kind`` to images (..., H, W)."""
    if kind == 0:
        return images
    if kind == 1:
        return np.flip(images, axis=-2)
    return np.rot90(images, k=1 if kind == 2 else 2, axes=(-2, -1))


def augmentation_plan(labels: np.ndarray, enabled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the dataset as (parent index, augmentation kind).

    Parents come first, in index order. Mergers then get copies, one augmentation at a time over
    all mergers (every merger is flipped before any is rotated), until the merger count reaches
    the largest other class or every merger has its three copies.
    """
    labels = np.asarray(labels)
    n = len(labels)
    parent, kind = [np.arange(n)], [np.zeros(n, dtype=np.int64)]
    mergers = np.flatnonzero(labels == MERGER)
    others = [np.count_nonzero(labels == c) for c in np.unique(labels) if c != MERGER and c >= 0]
    needed = (max(others) if others else 0) - len(mergers)
    if enabled and len(mergers) and needed > 0:
        for aug in (1, 2, 3):
            take = mergers[:min(needed, len(mergers))]
            parent.append(take)
            kind.append(np.full(len(take), aug, dtype=np.int64))
            needed -= len(take)
            if needed <= 0:
                break
    return np.concatenate(parent), np.concatenate(kind)


def empty_splits(split: np.ndarray) -> list[str]:
    """Names of the splits (train, validation, test) that no row of ``split`` falls in."""
    return [name for code, name in enumerate(SPLIT_NAMES) if not np.any(np.asarray(split) == code)]


def split_parents(labels: np.ndarray, fractions, seed: int) -> np.ndarray:
    """Split code (0 train, 1 validation, 2 test) for every parent, stratified by label.

    Within each class the parents are shuffled with a generator seeded from (seed, "split"), then
    cut at the cumulative fractions. Augmented copies inherit their parent's split, so no copy of a
    test galaxy is ever trained on.
    """
    labels = np.asarray(labels)
    out = np.empty(len(labels), dtype=np.int8)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B117]))
    cuts = np.cumsum(fractions)[:-1]
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        edges = np.round(cuts * len(members)).astype(int)
        for code, part in enumerate(np.split(members, edges)):
            out[part] = code
    return out
