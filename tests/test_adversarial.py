"""Adversarial training batches (hpcmorph.train.adversarial): which images are attacked, what changes in
them, and that the search leaves the model being trained as it found it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpcmorph import config
from hpcmorph.onepixel.corners import default_range
from hpcmorph.train import adversarial
from hpcmorph.train.model import build_model
from hpcmorph.train.normalize import AsinhStretch

SIZE, N = 32, 8
STRETCH = AsinhStretch(low=[-3.0], high=[6.0])
ROWS = np.arange(N) * 7 + 100  # the images' rows in galaxies.h5


def batch() -> np.ndarray:
    """N noisy galaxies-like blobs (N, 3, SIZE, SIZE), e-/s per pixel."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    blob = 3 * np.exp(-((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) / 30)
    return (np.random.default_rng(0).normal(0, 1, (N, 3, SIZE, SIZE)) + blob).astype(np.float32)


def near_tie_model(seed: int = 0):
    """(model in train mode, labels): an untrained GalaxyNet whose head is biased so that the batch's mean
    logits are 0: its classes nearly tie on every image, so one pixel can flip most of them; the labels
    are its own classes of the clean images (every image classified correctly)."""
    model = build_model(seed, dropout=0.5).eval()
    x = STRETCH(torch.from_numpy(batch()))
    with torch.no_grad():
        model.head.bias -= model(x)[1].mean(0)
        labels = model(x)[1].argmax(1).numpy()
    return model.train(), labels


@pytest.fixture(scope="module")
def near_ties(one_thread):
    return near_tie_model()


def attack(model, labels, rows=ROWS, images=None, fraction=1.0, step=0):
    images = batch() if images is None else images
    return adversarial.attack_batch(model, images, labels, STRETCH, rows, seed=3, epoch=1, step=step,
                                    fraction=fraction, queries=64)


def test_the_drawn_images_depend_on_seed_epoch_step_and_image_alone():
    rows = np.arange(64) + 1000
    base = adversarial.drawn(3, 1, 5, rows, 0.5)
    assert 0 < base.sum() < 64
    # Any split of the batch over ranks, in any order, draws the same images.
    assert np.array_equal(np.concatenate([adversarial.drawn(3, 1, 5, rows[:20], 0.5),
                                          adversarial.drawn(3, 1, 5, rows[20:], 0.5)]), base)
    assert np.array_equal(adversarial.drawn(3, 1, 5, rows[::-1], 0.5), base[::-1])
    for other in ((4, 1, 5), (3, 2, 5), (3, 1, 6)):
        assert not np.array_equal(adversarial.drawn(*other, rows, 0.5), base), other
    assert not adversarial.drawn(3, 1, 5, rows, 0.0).any() and adversarial.drawn(3, 1, 5, rows, 1.0).all()
    # A larger fraction draws every image a smaller one draws (one uniform number per image).
    assert not (base & ~adversarial.drawn(3, 1, 5, rows, 0.6)).any()


def test_one_or_two_shards_of_a_batch_attack_the_same_images(near_ties):
    model, labels = near_ties
    images, clean = batch(), STRETCH(torch.from_numpy(batch()))
    whole = attack(model, labels, fraction=0.5, images=images)
    halves = [attack(model, labels[s], ROWS[s], images[s], fraction=0.5) for s in (slice(0, 3), slice(3, N))]
    assert 0 < whole.drawn.sum() < N
    assert np.array_equal(np.concatenate([h.drawn for h in halves]), whole.drawn)
    for out, keep in [(whole, ~whole.drawn)] + [(h, ~h.drawn) for h in halves]:
        assert not out.attacked[keep].any() and not out.queries[keep].any()
    # Images not drawn are the plain step's input, bit for bit (the stretch is elementwise).
    assert torch.equal(whole.images[~torch.from_numpy(whole.drawn)], clean[~torch.from_numpy(whole.drawn)])
    assert not np.array_equal(attack(model, labels, fraction=0.5, step=1).drawn, whole.drawn)


def test_an_attacked_image_differs_in_one_pixel_at_a_corner_and_a_flip_is_real(near_ties):
    model, labels = near_ties
    labels = labels.copy()
    labels[0] = (labels[0] + 1) % 3  # misclassified: nothing to attack
    out = attack(model, labels)
    clean = STRETCH(torch.from_numpy(batch()))
    assert out.drawn.all() and not out.attacked[0] and out.attacked[1:].all()
    assert 0 < out.flips < N, "the toy must flip some images and not others for this test to mean anything"
    assert (out.queries[out.attacked] <= 64).all() and (out.queries[out.attacked] > 3).all()
    lo, hi = default_range(STRETCH)
    changed = (out.images != clean).any(1)  # (N, H, W): pixels with any band changed
    for i in range(N):
        where = torch.nonzero(changed[i])
        if not out.attacked[i]:
            assert len(where) == 0, f"image {i} was not attacked but changed"
            continue
        # A failed search's best candidate may set a pixel to the values it had (already at a clip limit).
        assert len(where) == 1 if out.flipped[i] else len(where) <= 1, (i, where)
        for y, x in where.tolist():
            values = out.images[i, :, y, x].tolist()
            assert all(min(abs(v - lo), abs(v - hi)) < 1e-6 for v in values), (values, lo, hi)
    assert not out.images.requires_grad and out.images.grad_fn is None
    # Classified again, in one pass of the whole batch: every flip stays a flip, every other image keeps
    # its class (1e-6 nats of slack for another batching's last bits).
    model.eval()
    with torch.no_grad():
        logits = model(out.images)[1].double()
    model.train()
    true = logits[torch.arange(N), torch.from_numpy(labels)]
    others = logits.scatter(1, torch.from_numpy(labels)[:, None], float("-inf")).amax(1)
    margin = (true - others).numpy()
    assert (margin[out.flipped] < 1e-6).all(), margin[out.flipped]
    assert (margin[out.attacked & ~out.flipped] > -1e-6).all(), margin[out.attacked & ~out.flipped]


def test_the_search_leaves_the_model_modes_weights_grads_and_rng_as_it_found_them(one_thread):
    model, labels = near_tie_model(1)
    model.features.bn1.eval()  # one module in another mode than the rest: each keeps its own

    def snapshot():
        return ({n: m.training for n, m in model.named_modules()},
                {k: v.clone() for k, v in model.state_dict().items()},
                {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
                torch.get_rng_state())

    def same(a, b):
        assert a[0] == b[0], "a module's mode changed"
        assert all(torch.equal(a[1][k], b[1][k]) for k in a[1]), "a weight or buffer changed"
        assert all((a[2][n] is None) == (b[2][n] is None) and (a[2][n] is None or torch.equal(a[2][n], b[2][n]))
                   for n in a[2]), "a parameter's gradient changed"
        assert torch.equal(a[3], b[3]), "torch's random numbers were drawn from"

    model.zero_grad(set_to_none=True)
    before = snapshot()
    out = attack(model, labels)
    assert out.attacked.any()
    same(before, snapshot())
    assert all(p.grad is None for p in model.parameters())
    # With a step's gradients in place, as when the lead's step attacks after another backward.
    model(STRETCH(torch.from_numpy(batch())))[1].sum().backward()
    before = snapshot()
    attack(model, labels)
    same(before, snapshot())


def test_the_adversarial_settings_are_validated_at_load():
    cfg = config.load("tiny")
    assert (cfg.train.adversarial_fraction, cfg.train.adversarial_queries) == (0.5, 64)
    for bad in ("train.adversarial_fraction=1.5", "train.adversarial_fraction=-0.1", "train.adversarial_queries=3"):
        with pytest.raises(config.ConfigError, match=bad.split("=")[0]):
            config.load("tiny", [bad])
