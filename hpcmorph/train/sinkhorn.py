"""Sinkhorn divergence between two batches of latents: entropic optimal transport, debiased.

S_eps(x, y) = OT_eps(x, y) - OT_eps(x, x) / 2 - OT_eps(y, y) / 2 (Feydy et al. 2019), with
OT_eps(x, y) = min_P <P, C> + eps KL(P | a (x) b) over the plans P between the uniform weights a, b
of the two batches, the cost C(x_i, y_j) = |x_i - y_j|^2 / 2 and eps = blur^2. It is zero when the
batches coincide, positive otherwise, and tends to the squared 2-Wasserstein distance / 2 as blur
goes to 0 (to an MMD with the -|x - y| kernel as it grows). Training adds
lambda * S_eps(z_Y10, z_Y1) to the cross-entropy: the Y1 latents are pulled onto the Y10 ones by
the transport that matches them, which sees every moment of the two distributions.

Computed by geomloss's ``SamplesLoss("sinkhorn", p=2, backend="tensorized")``: dense (n, m) cost
matrices, log-domain Sinkhorn iterations with eps-scaling from the batches' diameter down to blur
(``scaling`` the factor per step: 0.5 is a dozen iterations; a test compares 0.99 with POT), and
the gradient of the converged dual potentials. The value is in squared-latent units, so it scales as
the square of the latents' scale, and blur is in latent units. About 8-18 ms per step for 64-128
latents of 256 dimensions on one CPU thread, forward and backward (loaded machine, 2026-12-05): a
few per cent of a ResNet18 step.
"""

from __future__ import annotations

import torch

from .pairs import check_pair


def sinkhorn_divergence(x: torch.Tensor, y: torch.Tensor, *, blur: float = 0.05,
                        scaling: float = 0.5) -> torch.Tensor:
    """Debiased Sinkhorn divergence between latents ``x`` (n, d) and ``y`` (m, d) with uniform
    weights, squared-latent units, a 0-d tensor that carries gradient to both. ``blur``: latent units
    (eps = blur^2); ``scaling``: eps-scaling factor in (0, 1), closer to 1 is more exact and slower."""
    _check(x, y, blur, scaling)
    from geomloss import SamplesLoss

    return SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=True, backend="tensorized")(x, y)


def _check(x, y, blur, scaling) -> None:
    check_pair("sinkhorn", x, y)
    if not blur > 0:
        raise ValueError(f"sinkhorn: blur must be positive (latent units), got {blur!r}")
    if not 0 < scaling < 1:
        raise ValueError(f"sinkhorn: scaling must be in (0, 1), got {scaling!r}")
