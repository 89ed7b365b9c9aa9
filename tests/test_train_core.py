"""The training stage's building blocks: the classifier, the MMD loss and the input stretch."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch

from hpcmorph.train import mmd, normalize
from hpcmorph.train.model import GalaxyNet, build_model


# ----------------------------------------------------------------------------------------- model

@pytest.fixture(scope="module")
def net() -> GalaxyNet:
    return build_model(0)


def images(n=2, size=100, seed=0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_model_output_shapes_at_100px(net):
    net.eval()
    with torch.no_grad():
        latent, logits = net(images())
    assert latent.shape == (2, 256) and logits.shape == (2, 3)


def test_model_options_change_the_shapes():
    small = GalaxyNet(n_classes=4, latent_dim=16, in_channels=1).eval()
    with torch.no_grad():
        latent, logits = small(torch.randn(2, 1, 64, 64))
    assert latent.shape == (2, 16) and logits.shape == (2, 4)


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_model(7)
    assert torch.equal(torch.rand(3), expected)  # build_model left the global generator alone
    b, c = build_model(7), build_model(8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["head.weight"], sc["head.weight"])
    assert not torch.equal(sa["features.conv1.weight"], sc["features.conv1.weight"])


def test_head_alone_gives_the_logits(net):
    net.eval()
    with torch.no_grad():
        latent, logits = net(images())
        torch.testing.assert_close(net.classify_latent(latent), logits, rtol=0, atol=0)


def test_dropout_is_active_in_training_mode_only(net):
    x = images(4, 64)
    with torch.no_grad():
        net.train()
        z1, _ = net(x)
        z2, _ = net(x)
        net.eval()
        z3, _ = net(x)
        z4, _ = net(x)
        # Without dropout, training mode is deterministic too: the difference above is dropout's.
        plain = build_model(0, dropout=0.0).train()
        z5, _ = plain(x)
        z6, _ = plain(x)
    assert not torch.allclose(z1, z2)
    assert torch.equal(z3, z4)
    assert torch.equal(z5, z6)


def test_model_rejects_wrong_inputs(net):
    with pytest.raises(ValueError, match=r"expects images shaped \(B, 3, H, W\), got shape \(3, 100, 100\)"):
        net(torch.zeros(3, 100, 100))
    with pytest.raises(ValueError, match=r"latents shaped \(B, 256\), got shape \(2, 3\)"):
        net.classify_latent(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="dropout must be in"):
        GalaxyNet(dropout=1.0)


# ------------------------------------------------------------------------------------------- MMD

def gaussian(n, d, seed, shift=0.0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype) + shift


def naive_mmd2(x, y, widths=None, unbiased=False) -> float:
    """MMD^2 by explicit loops over pairs; ``widths`` are the denominators of exp(-d^2 / w)."""
    x, y = x.tolist(), y.tolist()
    pooled = x + y

    def d2(a, b):
        return sum((ai - bi) ** 2 for ai, bi in zip(a, b))

    if widths is None:
        pairs = [d2(a, b) for i, a in enumerate(pooled) for j, b in enumerate(pooled) if i != j]
        mean = sum(pairs) / len(pairs)
        widths = [2.0 ** j * mean for j in (-2, -1, 0, 1, 2)]

    def k(a, b):
        return sum(math.exp(-d2(a, b) / w) for w in widths)

    def within(s):
        if unbiased:
            terms = [k(a, b) for i, a in enumerate(s) for j, b in enumerate(s) if i != j]
        else:
            terms = [k(a, b) for a in s for b in s]
        return sum(terms) / len(terms)

    cross = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    return within(x) + within(y) - 2.0 * cross


@pytest.mark.parametrize("bandwidth", mmd.BANDWIDTHS)
def test_mmd_is_zero_for_identical_samples(bandwidth):
    x = gaussian(32, 8, 0)
    assert abs(mmd.mmd2(x, x.clone(), bandwidth=bandwidth).item()) < 1e-5


def test_mmd_grows_with_a_mean_shift():
    x = gaussian(64, 8, 0)
    values = [mmd.mmd2(x, gaussian(64, 8, 1, shift)).item() for shift in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_batch_bandwidth_makes_mmd_scale_free():
    x, y = gaussian(16, 8, 0, dtype=torch.float64), gaussian(16, 8, 1, 0.5, dtype=torch.float64)
    torch.testing.assert_close(mmd.mmd2(30.0 * x, 30.0 * y), mmd.mmd2(x, y))
    # The gradient flows through the widths too, so it has no component along a common rescaling.
    x.requires_grad_(), y.requires_grad_()
    mmd.mmd2(x, y).backward()
    along_scale = (x.grad * x).sum() + (y.grad * y).sum()
    assert abs(along_scale.item()) < 1e-10 * (x.grad.norm() * x.norm()).item()


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("bandwidth", mmd.BANDWIDTHS)
def test_mmd_matches_a_double_loop(bandwidth, unbiased):
    # Latents of order 1e-2 keep the small fixed widths from vanishing to zero in every pair.
    scale = 1.0 if bandwidth == "batch" else 1e-2
    x, y = scale * gaussian(5, 3, 0, dtype=torch.float64), scale * gaussian(7, 3, 1, 0.7, dtype=torch.float64)
    widths = None if bandwidth == "batch" else [2.0 * s for s in mmd.AUTHORS_VARIANCES]
    expected = naive_mmd2(x, y, widths, unbiased)
    got = mmd.mmd2(x, y, bandwidth=bandwidth, unbiased=unbiased).item()
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("bandwidth", mmd.BANDWIDTHS)
def test_mmd_gradient_trains_an_encoder(bandwidth):
    # The bug this catches: an MMD computed under no_grad, or on detached latents, trains nothing.
    torch.manual_seed(0)
    encoder = torch.nn.Linear(4, 3)
    source, target = gaussian(32, 4, 0), gaussian(32, 3, 1, 1.5)
    before = encoder.weight.detach().clone()
    opt = torch.optim.SGD(encoder.parameters(), lr=0.05)
    loss0 = mmd.mmd2(encoder(source), target, bandwidth=bandwidth)
    opt.zero_grad()
    loss0.backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(encoder.weight.detach(), before)
    assert mmd.mmd2(encoder(source), target, bandwidth=bandwidth).item() < loss0.item()


def test_mmd_gradient_reaches_both_inputs():
    x = gaussian(8, 3, 0).requires_grad_()
    y = gaussian(8, 3, 1, 1.0).requires_grad_()
    mmd.mmd2(x, y).backward()
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0


def test_mmd_rejects_wrong_inputs():
    with pytest.raises(ValueError, match="same latent dimension, got 3 and 4"):
        mmd.mmd2(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"shaped \(n, d\)"):
        mmd.mmd2(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="at least 2 points"):
        mmd.mmd2(torch.zeros(1, 3), torch.zeros(4, 3), unbiased=True)
    with pytest.raises(ValueError, match="bandwidth must be one of"):
        mmd.mmd2(torch.zeros(2, 3), torch.zeros(2, 3), bandwidth="median")


# ------------------------------------------------------------------------------------- normalize

def count_rates(n, seed, sky_sigma=1.0, peak=50.0, size=32) -> np.ndarray:
    """Sky-subtracted mock images (e-/s per pixel): a Gaussian blob plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2
    blob = peak * np.exp(-(xx ** 2 + yy ** 2) / 20.0)
    colours = np.array([0.6, 1.0, 1.4])[:, None, None]
    return (colours * blob + rng.normal(0.0, sky_sigma, (n, 3, size, size))).astype(np.float32)


def test_fit_uses_the_training_rows_only():
    train, test = count_rates(20, 0), count_rates(10, 1, sky_sigma=3.0, peak=200.0)
    both = np.concatenate([train, test])
    is_train = np.arange(30) < 20
    fitted = normalize.AsinhStretch.fit(train)
    assert normalize.AsinhStretch.fit(both, rows=is_train) == fitted
    assert normalize.AsinhStretch.fit(both, rows=np.flatnonzero(is_train)) == fitted
    assert normalize.AsinhStretch.fit(both) != fitted
    assert normalize.AsinhStretch.fit(test) != fitted
    lo, hi = np.percentile(train, normalize.PERCENTILES)
    assert fitted.low == pytest.approx([lo]) and fitted.high == pytest.approx([hi])


def test_fit_subsample_is_deterministic_and_reads_hdf5(tmp_path):
    data = count_rates(40, 2)
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_dataset("y10", data=data, chunks=(1, 3, 32, 32))
    with h5py.File(tmp_path / "g.h5", "r") as f:
        from_file = normalize.AsinhStretch.fit(f["y10"], max_images=8, seed=3)
    assert normalize.AsinhStretch.fit(data, max_images=8, seed=3) == from_file
    assert normalize.AsinhStretch.fit(data, max_images=8, seed=4) != from_file


def test_per_band_fit_gives_one_pair_per_band():
    data = count_rates(10, 0)
    stretch = normalize.AsinhStretch.fit(data, per_band=True)
    assert stretch.per_band and len(stretch.low) == len(stretch.high) == 3
    assert stretch.high == pytest.approx(np.percentile(data, 99.9, axis=(0, 2, 3)))
    assert stretch.high[0] < stretch.high[2]  # the redder band is brighter in these mocks


def test_transform_maps_the_clip_limits_and_clips_beyond():
    stretch = normalize.AsinhStretch(low=[-2.0], high=[40.0])
    x = np.zeros((1, 3, 2, 2), dtype=np.float32)
    x[0, :, 0, 0], x[0, :, 0, 1], x[0, :, 1, 0], x[0, :, 1, 1] = 40.0, 4000.0, -2.0, -50.0
    y = stretch.transform(x)
    top, bottom = (math.asinh(0.85) + 1) / 2, (math.asinh(0.85 * -2.0 / 40.0) + 1) / 2
    np.testing.assert_allclose(y[0, :, 0, :], top, rtol=1e-6)
    np.testing.assert_allclose(y[0, :, 1, :], bottom, rtol=1e-6)
    assert y.dtype == np.float32
    assert stretch.transform(np.zeros((1, 1, 1, 1)))[0, 0, 0, 0] == 0.5


@pytest.mark.parametrize("per_band", [False, True])
def test_numpy_and_torch_give_the_same_numbers(per_band):
    stretch = normalize.AsinhStretch.fit(count_rates(8, 0), per_band=per_band)
    x = count_rates(3, 5, sky_sigma=2.0, peak=80.0)
    np.testing.assert_allclose(stretch.transform(torch.from_numpy(x)).numpy(), stretch.transform(x),
                               rtol=1e-6, atol=1e-7)


def test_to_dict_round_trips_through_json():
    stretch = normalize.AsinhStretch.fit(count_rates(8, 0), per_band=True)
    state = json.loads(json.dumps(stretch.to_dict()))
    assert normalize.AsinhStretch.from_dict(state) == stretch
    with pytest.raises(ValueError, match=r"keys \['high', 'low', 'softening'\], got \['high', 'low'\]"):
        normalize.AsinhStretch.from_dict({"low": [0.0], "high": [1.0]})


def test_stretch_rejects_bad_images():
    stretch = normalize.AsinhStretch(low=[-1.0], high=[10.0])
    with pytest.raises(ValueError, match=r"shaped \(N, C, H, W\), got shape \(3, 8, 8\)"):
        stretch.transform(np.zeros((3, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shaped \(N, C, H, W\), got shape \(3, 8, 8\)"):
        normalize.AsinhStretch.fit(np.zeros((3, 8, 8), dtype=np.float32))
    bad = count_rates(4, 0)
    bad[2, 1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="1 non-finite pixels in the training images, first in row 2"):
        normalize.AsinhStretch.fit(bad)
    with pytest.raises(ValueError, match="NaN or infinite"):
        stretch.transform(bad)
    with pytest.raises(ValueError, match="NaN or infinite"):
        stretch.transform(torch.from_numpy(bad))
    with pytest.raises(ValueError, match="need 0 < high"):
        normalize.AsinhStretch.fit(np.zeros((2, 3, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"fitted per band on 3 bands, got images with 1 channels"):
        normalize.AsinhStretch.fit(count_rates(4, 0), per_band=True).transform(np.zeros((1, 1, 4, 4)))


def test_cosine_schedule_falls_from_the_peak_to_zero_and_constant_stays():
    from hpcmorph import config
    from hpcmorph.train.stage import learning_rate

    t = config.load("tiny", ["train.schedule=cosine", "train.epochs=4", "train.lr=0.001"]).train
    rates = [learning_rate(t, e, s, 5) for e in range(4) for s in range(5)]
    assert rates[0] == pytest.approx(0.001) and rates[-1] < 0.001 * 0.01
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert learning_rate(t, 2, 0, 5) == pytest.approx(0.0005)  # half way
    flat = config.load("tiny", ["train.epochs=4", "train.lr=0.001"]).train
    assert {learning_rate(flat, e, s, 5) for e in range(4) for s in range(5)} == {0.001}


@pytest.mark.parametrize("seed", [0, 7])
def test_the_trunk_is_torchvisions_resnet18_weight_for_weight(seed):
    torchvision = pytest.importorskip("torchvision")
    from hpcmorph.train.resnet import ResNet18Trunk

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ours = ResNet18Trunk()
        torch.manual_seed(seed)
        theirs = torchvision.models.resnet18(weights=None)
    mine = ours.state_dict()
    reference = {k: v for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    assert list(mine) == list(reference)
    assert all(torch.equal(mine[k], reference[k]) for k in mine)
    x = torch.randn(2, 3, 40, 40)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        trunk = torch.nn.Sequential(*list(theirs.children())[:-2])
        assert torch.equal(ours(x), trunk(x))
