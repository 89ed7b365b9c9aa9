"""The training variants' losses (CORAL, DANN's reversal and critic, Sinkhorn), each against a reference,
the registry against the configuration, and the convnet architecture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hpcmorph import config
from hpcmorph.config import ConfigError
from hpcmorph.train import coral, dann, sinkhorn, variants
from hpcmorph.train.convnet import ConvNet
from hpcmorph.train.model import build_model, for_config


def latents(n, d, seed, shift=0.0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype) + shift


# ------------------------------------------------------------------------------------- registry

def test_the_registry_is_the_configurations_list_and_every_weight_is_a_setting():
    assert tuple(variants.REGISTRY) == config.TRAIN_VARIANTS
    for v in variants.REGISTRY.values():
        assert (v.weight is None) == (v.term is None)
        for key in filter(None, (v.weight, v.weight_decay)):
            assert f"train.{key}" in config.FIELDS, f"{v.name}: no setting train.{key}"
    assert {n: (variants.of(n).uses_y1, variants.of(n).critic, variants.of(n).adversarial)
            for n in config.TRAIN_VARIANTS} == {
        "regular": (False, False, False), "mmd": (True, False, False), "coral": (True, False, False),
        "dann": (True, True, False), "sinkhorn": (True, False, False), "adversarial": (False, False, True),
        "adversarial+mmd": (True, False, True)}
    with pytest.raises(ValueError, match="unknown training variant 'dan'"):
        variants.of("dan")


def test_new_settings_are_validated():
    cfg = config.load("tiny", ["train.variants=[coral, dann, sinkhorn]", "attack.variants=[dann]"])
    assert cfg.train.variants == ["coral", "dann", "sinkhorn"]
    for override, message in (("train.variants=[cora]", "'cora' is not one of"),
                              ("train.coral_lambda=-1", "out of range"), ("train.sinkhorn_blur=0", "out of range"),
                              ("train.arch=vgg", "'vgg' is not one of")):
        with pytest.raises(ConfigError, match=message):
            config.load("tiny", [override])


def test_the_digest_takes_the_new_settings_only_away_from_their_defaults():
    from hpcmorph.train.stage import digest

    cfg = config.load("tiny")
    # The keys models were trained under before these settings existed: their digests stay as they were.
    before = ("epochs", "patience", "batch_size", "lr", "schedule", "betas", "weight_decay", "weight_decay_mmd",
              "mmd_lambda", "mmd_bandwidth", "dropout", "normalize_per_band", "max_train_images")
    assert digest(cfg) == cfg.digest("run.seed", "generate", *(f"train.{k}" for k in before))
    assert digest(cfg.updated({"train.variants": ["dann"]})) == digest(cfg)
    changed = {digest(cfg.updated({key: value})) for key, value in (
        ("train.arch", "convnet"), ("train.coral_lambda", 2.0), ("train.dann_lambda", 0.5),
        ("train.sinkhorn_lambda", 0.1), ("train.sinkhorn_blur", 0.2))}
    assert len(changed) == 5 and digest(cfg) not in changed


# ---------------------------------------------------------------------------------------- CORAL

def test_coral_is_the_papers_formula():
    x, y = latents(9, 5, 0), latents(12, 5, 1, shift=0.3) * 1.7
    cx, cy = np.cov(x.numpy(), rowvar=False), np.cov(y.numpy(), rowvar=False)  # unbiased, as the paper's
    expected = np.sum((cx - cy) ** 2) / (4 * 5 ** 2)
    assert float(coral.coral(x, y)) == pytest.approx(expected, rel=1e-12)
    assert float(coral.coral(x, x + 5.0)) == pytest.approx(0.0, abs=1e-12)  # the mean is left free


def test_coral_gradcheck():
    x, y = latents(6, 4, 2).requires_grad_(), latents(7, 4, 3).requires_grad_()
    assert torch.autograd.gradcheck(coral.coral, (x, y))


def test_coral_rejects_what_has_no_covariance():
    with pytest.raises(ValueError, match="n >= 2"):
        coral.coral(latents(1, 4, 0), latents(5, 4, 1))
    with pytest.raises(ValueError, match="same latent dimension"):
        coral.coral(latents(3, 4, 0), latents(3, 5, 1))


# ----------------------------------------------------------------------------------------- DANN

def test_gradient_reversal_is_the_identity_forward_and_minus_lambda_backward():
    x = latents(4, 3, 0).requires_grad_()
    w = latents(4, 3, 1)
    y = dann.reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * w, rtol=0, atol=0)
    with pytest.raises(ValueError, match="coefficient"):
        dann.reverse_gradient(x, -1.0)


def test_the_critic_learns_and_the_encoder_is_pushed_the_other_way():
    """Through WithCritic, the domain loss's gradient on the critic is the plain one, and on the
    classifier it is -lambda_p times the plain one."""
    net = build_model(0, "convnet", image_size=16, dropout=0.0).double()
    critic = dann.build_critic(0, net.latent_dim).double()
    model = dann.WithCritic(net, critic)
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def grads(reversal):
        model.zero_grad()
        if reversal is None:  # the critic on the latents with no reversal
            domain = critic(net(x)[0])
        else:
            domain = model(x, reversal=reversal)[2]
        dann.domain_loss(domain, 3).backward()
        # The head is not on the critic's path: it has no gradient either way.
        return ({k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None},
                {k: p.grad.clone() for k, p in critic.named_parameters()})

    plain_net, plain_critic = grads(None)
    net_g, critic_g = grads(0.25)
    for k in plain_critic:
        torch.testing.assert_close(critic_g[k], plain_critic[k])
    assert set(net_g) == set(plain_net) and "bottleneck.weight" in net_g
    for k in plain_net:
        torch.testing.assert_close(net_g[k], -0.25 * plain_net[k])
    assert any(g.abs().sum() > 0 for g in plain_net.values())


def test_reversal_schedule_is_ganins_and_a_function_of_position():
    from hpcmorph.train.stage import progress_of

    assert dann.reversal_schedule(0.0) == 0.0
    assert dann.reversal_schedule(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann.reversal_schedule(0.1) == pytest.approx(2 / (1 + math.exp(-1)) - 1)
    t = config.load("tiny", ["train.epochs=4"]).train
    ps = [progress_of(t, e, s, 5) for e in range(4) for s in range(5)]
    assert ps[0] == 0.0 and ps[-1] == pytest.approx(19 / 20) and all(a < b for a, b in zip(ps, ps[1:]))


def test_domain_loss_is_binary_cross_entropy_y10_zero_y1_one():
    logits = torch.tensor([-2.0, 0.5, 1.0, 3.0])
    expected = -(math.log(1 - 1 / (1 + math.exp(2.0))) + math.log(1 - 1 / (1 + math.exp(-0.5)))
                 + math.log(1 / (1 + math.exp(-1.0))) + math.log(1 / (1 + math.exp(-3.0)))) / 4
    assert float(dann.domain_loss(logits, 2)) == pytest.approx(expected, rel=1e-6)
    assert float(dann.domain_loss(torch.zeros(6), 3)) == pytest.approx(math.log(2))


def test_the_critic_depends_on_the_seed_alone():
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    a, b, c = dann.build_critic(3), dann.build_critic(3), dann.build_critic(4)
    assert torch.equal(torch.rand(2), expected)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.layers.fc1.weight, c.layers.fc1.weight)


# ------------------------------------------------------------------------------------- Sinkhorn

def _pot_plan(x: np.ndarray, y: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(POT's entropic plan between uniform weights, the cost |x - y|^2 / 2)."""
    ot = pytest.importorskip("ot")
    a, b = np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y))
    cost = ot.dist(x, y) / 2  # squared Euclidean
    return ot.sinkhorn(a, b, cost, reg=eps, method="sinkhorn_log", numItermax=5_000, stopThr=1e-10), cost


def _pot_ot_eps(x: np.ndarray, y: np.ndarray, eps: float) -> float:
    """OT_eps = <P, C> + eps KL(P | a (x) b) at POT's plan."""
    plan, cost = _pot_plan(x, y, eps)
    ab = np.outer(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)))
    return float(np.sum(plan * cost) + eps * np.sum(plan * np.log(plan / ab)))


@pytest.mark.parametrize("blur", [0.5, 1.0])
def test_sinkhorn_divergence_matches_pot(blur):
    x, y = latents(7, 3, 0), latents(9, 3, 1, shift=0.7)
    xn, yn, eps = x.numpy(), y.numpy(), blur ** 2
    expected = _pot_ot_eps(xn, yn, eps) - _pot_ot_eps(xn, xn, eps) / 2 - _pot_ot_eps(yn, yn, eps) / 2
    assert float(sinkhorn.sinkhorn_divergence(x, y, blur=blur, scaling=0.99)) == pytest.approx(expected, rel=1e-3)
    # The training's default eps-scaling, a few iterations: within a few per cent.
    assert float(sinkhorn.sinkhorn_divergence(x, y, blur=blur)) == pytest.approx(expected, rel=5e-2)


def test_sinkhorn_divergence_tends_to_exact_transport_and_is_zero_on_one_batch():
    ot = pytest.importorskip("ot")
    x, y = latents(6, 2, 2), latents(8, 2, 3, shift=2.0)
    exact = ot.emd2(np.full(6, 1 / 6), np.full(8, 1 / 8), ot.dist(x.numpy(), y.numpy()) / 2)
    assert float(sinkhorn.sinkhorn_divergence(x, y, blur=0.01, scaling=0.99)) == pytest.approx(exact, rel=1e-2)
    assert float(sinkhorn.sinkhorn_divergence(x, x.clone(), blur=0.1)) == pytest.approx(0.0, abs=1e-9)


def test_sinkhorn_gradient_is_the_transport_plans_displacement():
    """The exact gradient (envelope theorem, POT's converged plans P_xy and P_xx): d S / d x_i =
    sum_j P_xy[i, j] (x_i - y_j) - sum_j P_xx[i, j] (x_i - x_j); geomloss's tends to it as its
    eps-scaling tends to 1 (at 0.5, on few points, it is a rough direction: docs/train.md)."""
    x, y = latents(5, 3, 4), latents(6, 3, 5, shift=0.5)
    p_xy, _ = _pot_plan(x.numpy(), y.numpy(), 0.25)
    p_xx, _ = _pot_plan(x.numpy(), x.numpy(), 0.25)
    xn, yn = x.numpy(), y.numpy()
    exact = p_xy.sum(1)[:, None] * xn - p_xy @ yn - (p_xx.sum(1)[:, None] * xn - p_xx @ xn)
    x.requires_grad_()
    (grad,) = torch.autograd.grad(sinkhorn.sinkhorn_divergence(x, y, blur=0.5, scaling=0.999), x)
    np.testing.assert_allclose(grad.numpy(), exact, atol=5e-3 * np.abs(exact).max())


def test_sinkhorn_rejects_wrong_inputs():
    with pytest.raises(ValueError, match="same latent dimension"):
        sinkhorn.sinkhorn_divergence(latents(3, 4, 0), latents(3, 5, 1))
    with pytest.raises(ValueError, match="blur must be positive"):
        sinkhorn.sinkhorn_divergence(latents(3, 4, 0), latents(3, 4, 1), blur=0.0)


# -------------------------------------------------------------------------------------- convnet

@pytest.mark.parametrize("size", [100, 48])
def test_convnet_gives_a_256_d_latent_and_three_logits(size):
    net = build_model(0, "convnet", image_size=size).eval()
    with torch.no_grad():
        latent, logits = net(torch.randn(2, 3, size, size))
        torch.testing.assert_close(net.classify_latent(latent), logits, rtol=0, atol=0)
    assert latent.shape == (2, 256) and logits.shape == (2, 3)
    assert net.bottleneck.in_features == 32 * (size // 8) ** 2  # 32 x 12 x 12 at the authors' 100 px


def test_convnet_is_seeded_and_checks_its_input():
    a, b = build_model(3, "convnet", image_size=32), build_model(3, "convnet", image_size=32)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match=r"expects images shaped \(B, 3, 32, 32\)"):
        a(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="image_size"):
        build_model(0, "convnet")
    with pytest.raises(ValueError, match="at least 8 px"):
        ConvNet(image_size=4)


def test_the_config_builds_its_architecture():
    cfg = config.load("tiny", ["train.arch=convnet", "generate.bands=[r, i]", "train.dropout=0"])
    net = for_config(cfg, 0)
    assert isinstance(net, ConvNet) and net.in_channels == 2 and net.image_size == cfg.generate.image_size
    assert type(for_config(config.load("tiny"), 0)).__name__ == "GalaxyNet"


# --------------------------------------------------------------------------------------- resume

def test_a_checkpoint_whose_history_names_the_mmd_column_resumes(tmp_path):
    """history.csv's domain column was train_mmd: a checkpoint holding such epochs resumes under the
    column's general name (else the next epoch's row would not fit the first's header)."""
    from dataclasses import asdict

    from hpcmorph import precision
    from hpcmorph.train.stage import Progress, build, digest, resume

    cfg = config.load("tiny", ["train.arch=convnet", "generate.image_size=16"])
    cpu = torch.device("cpu")
    model, optimizer = build(cfg, "dann", 0, cpu)
    old = {"epoch": 1, "train_loss": 1.0, "train_mmd": 0.5, "val_loss": 1.1, "val_accuracy": 0.4,
           "train_seconds": 2.0, "images": 40}
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "state": asdict(Progress(epoch=1, history=[old])), "precision": "fp32", "digest": digest(cfg)},
               tmp_path / "checkpoint.pt")
    fresh, fresh_optimizer = build(cfg, "dann", 1, cpu)
    progress = resume(cfg, tmp_path, fresh, fresh_optimizer, precision.grad_scaler("fp32", cpu), "fp32", False, "t")
    assert progress.epoch == 1 and progress.history[0]["train_discrepancy"] == 0.5
    assert "train_mmd" not in progress.history[0]
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
