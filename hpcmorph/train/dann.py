"""DANN (Ganin et al. 2016): a domain classifier on the latent, trained through gradient reversal.

A small critic reads each latent and says which exposure it came from (Y10 or Y1). Its loss,
L_d = the mean binary cross-entropy over both batches (Y10 labelled 0, Y1 labelled 1), is added to
the classification loss as dann_lambda * L_d. Between the latent and the critic sits a gradient
reversal layer: the identity forward, -lambda_p x the gradient backward. So one step moves the critic
down L_d (better at telling the exposures apart) and the encoder up it, scaled by lambda_p (towards
latents the critic cannot tell apart), with no second optimizer. lambda_p follows Ganin et al.'s
schedule 2 / (1 + exp(-10 p)) - 1 of the training progress p in [0, 1]: 0 at the start, when the
critic knows nothing worth reversing, to 1 at the end. p is a function of (epoch, step) alone, so a
resumed run reverses exactly as an uninterrupted one.

The critic (:class:`DomainCritic`, 256 -> 256 -> 256 -> 1 with ReLUs, initialised from the training
seed) is the study's choice: Ganin et al.'s for Office had two hidden layers of 1024 with dropout.
:class:`WithCritic` holds the classifier and the critic as one module, so the optimizer, the
backends' gradient averaging and checkpoint.pt see both; model.pt keeps the classifier alone, which
later stages load as any other.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CRITIC_STREAM = 5  # the critic's initialisation stream of the training seed (data.py's streams are 0-4)


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coefficient):
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coefficient * grad, None


def reverse_gradient(x: torch.Tensor, coefficient: float) -> torch.Tensor:
    """``x`` unchanged; the gradient that flows back through it is multiplied by ``-coefficient``."""
    if isinstance(coefficient, bool) or not isinstance(coefficient, (int, float)) or not coefficient >= 0:
        raise ValueError(f"reverse_gradient: coefficient must be a number >= 0, got {coefficient!r}")
    return _Reverse.apply(x, float(coefficient))


def reversal_schedule(progress: float) -> float:
    """Ganin et al.'s lambda_p = 2 / (1 + exp(-10 p)) - 1 at training progress ``progress`` in [0, 1]."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"reversal_schedule: progress must be in [0, 1], got {progress!r}")
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class DomainCritic(nn.Module):
    """Latents (B, latent_dim) -> domain logits (B,): positive says Y1, negative Y10."""

    def __init__(self, latent_dim: int = 256, hidden: int = 256):
        super().__init__()
        self.layers = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(latent_dim, hidden)), ("relu1", nn.ReLU()),
            ("fc2", nn.Linear(hidden, hidden)), ("relu2", nn.ReLU()),
            ("out", nn.Linear(hidden, 1))]))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.layers(latent).squeeze(1)


def build_critic(seed: int, latent_dim: int = 256) -> DomainCritic:
    """A critic whose initial weights depend on ``seed`` alone (its own stream: the classifier's
    initialisation and the global RNG are left as they were)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(np.random.SeedSequence([seed, CRITIC_STREAM]).generate_state(1)[0]))
        return DomainCritic(latent_dim)


def domain_loss(domain_logits: torch.Tensor, n_y10: int) -> torch.Tensor:
    """Mean binary cross-entropy of the critic's logits (B,), the first ``n_y10`` of Y10 (label 0) and the
    rest of Y1 (label 1); ln 2 when the critic cannot tell them apart and says so."""
    if domain_logits.ndim != 1 or not 0 < n_y10 < domain_logits.shape[0]:
        raise ValueError(f"domain_loss: expected logits (B,) with 0 < n_y10 < B, got shape "
                         f"{tuple(domain_logits.shape)} and n_y10={n_y10}")
    target = torch.ones_like(domain_logits)
    target[:n_y10] = 0.0
    return F.binary_cross_entropy_with_logits(domain_logits, target)


class WithCritic(nn.Module):
    """A classifier (``net``, returning ``(latent, logits)``) and its domain critic, trained as one module.

    ``forward(x)`` is the classifier's; ``forward(x, reversal=c)`` also returns the critic's logits
    of the latents through a gradient reversal of coefficient ``c``, computed in float32 (or wider) whatever
    autocast the pass runs under (the critic is small; its loss stays float32 like the others).
    """

    def __init__(self, net: nn.Module, critic: DomainCritic):
        super().__init__()
        self.net, self.critic = net, critic

    @property
    def latent_dim(self) -> int:
        return self.net.latent_dim

    def forward(self, x: torch.Tensor, reversal: float | None = None):
        latent, logits = self.net(x)
        if reversal is None:
            return latent, logits
        with torch.autocast(x.device.type, enabled=False):
            wide = latent.to(torch.promote_types(latent.dtype, torch.float32))
            domain = self.critic(reverse_gradient(wide, reversal))
        return latent, logits, domain
