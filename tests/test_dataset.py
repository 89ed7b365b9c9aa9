"""Merger augmentation and the stratified, leak-free split."""

import numpy as np
import pytest

from hpcmorph.generate import dataset
from hpcmorph.generate.morphology import ELLIPTICAL, MERGER, SPIRAL


def test_augment_matches_numpy_geometry():
    img = np.arange(2 * 3 * 4 * 4, dtype=float).reshape(2, 3, 4, 4)
    np.testing.assert_array_equal(dataset.augment(img, 0), img)
    np.testing.assert_array_equal(dataset.augment(img, 1)[1, 2], img[1, 2][::-1, :])
    np.testing.assert_array_equal(dataset.augment(img, 2)[0, 1], np.rot90(img[0, 1]))
    np.testing.assert_array_equal(dataset.augment(img, 3)[0, 0], img[0, 0][::-1, ::-1])


def test_mergers_are_augmented_towards_the_largest_class():
    labels = np.array([SPIRAL] * 50 + [ELLIPTICAL] * 30 + [MERGER] * 20)
    parent, kind = dataset.augmentation_plan(labels)
    final = labels[parent]
    assert np.count_nonzero(final == MERGER) == 50
    assert np.count_nonzero(final == SPIRAL) == 50 and np.count_nonzero(final == ELLIPTICAL) == 30
    # Every merger is flipped before any is rotated; only mergers are copied.
    copies = kind > 0
    assert set(labels[parent[copies]]) == {MERGER}
    assert np.count_nonzero(kind == 1) == 20 and np.count_nonzero(kind == 2) == 10
    np.testing.assert_array_equal(parent[: len(labels)], np.arange(len(labels)))


def test_at_most_three_copies_per_merger_and_none_when_disabled():
    labels = np.array([SPIRAL] * 100 + [MERGER] * 10)
    parent, kind = dataset.augmentation_plan(labels)
    assert np.count_nonzero(labels[parent] == MERGER) == 40
    assert np.bincount(parent[kind > 0]).max() == 3
    parent, kind = dataset.augmentation_plan(labels, enabled=False)
    assert len(parent) == len(labels) and not kind.any()


def test_split_is_stratified_and_deterministic():
    rng = np.random.default_rng(1)
    labels = rng.choice(3, size=1000, p=[0.5, 0.3, 0.2])
    split = dataset.split_parents(labels, [0.7, 0.1, 0.2], seed=3)
    for cls in range(3):
        members = split[labels == cls]
        fractions = np.bincount(members, minlength=3) / len(members)
        np.testing.assert_allclose(fractions, [0.7, 0.1, 0.2], atol=0.01)
    np.testing.assert_array_equal(split, dataset.split_parents(labels, [0.7, 0.1, 0.2], seed=3))
    assert not np.array_equal(split, dataset.split_parents(labels, [0.7, 0.1, 0.2], seed=4))


def test_copies_inherit_their_parents_split():
    labels = np.array([SPIRAL] * 40 + [MERGER] * 12)
    parent, _ = dataset.augmentation_plan(labels)
    split = dataset.split_parents(labels, [0.7, 0.1, 0.2], seed=0)[parent]
    for p in np.unique(parent):
        assert len(set(split[parent == p])) == 1


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_classes_still_split(n):
    split = dataset.split_parents(np.zeros(n, dtype=int), [0.7, 0.1, 0.2], seed=0)
    assert len(split) == n and set(split) <= {0, 1, 2}
