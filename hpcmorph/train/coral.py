"""Deep CORAL (Sun & Saenko 2016): the distance between the second-order statistics of two batches.

CORAL(x, y) = |C_x - C_y|_F^2 / (4 d^2), where C is a batch's unbiased covariance of its d-dim latents,
C_x = (x^T x - (1^T x)^T (1^T x) / n) / (n - 1). Training adds lambda * CORAL(z_Y10, z_Y1) to the
cross-entropy, so the encoder maps both exposures to latents of the same covariance (the mean is
left free: the paper aligns covariances only). The value is in squared-latent units squared: it
grows as the fourth power of the latents' scale, so, unlike the batch-scaled MMD, the encoder can
lower it by shrinking the latent space (the head and weight decay pull the other way).
"""

from __future__ import annotations

import torch

from .pairs import check_pair


def covariance(z: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance (d, d) of the rows of ``z`` (n, d), n >= 2."""
    centred = z - z.mean(0, keepdim=True)
    return centred.T @ centred / (z.shape[0] - 1)


def coral(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CORAL loss between latents ``x`` (n, d) and ``y`` (m, d), n, m >= 2: a 0-d tensor that carries
    gradient to both (squared Frobenius distance of the covariances over 4 d^2)."""
    check_pair("coral", x, y, min_points=2, why=" (a covariance)")
    d = x.shape[1]
    return (covariance(x) - covariance(y)).pow(2).sum() / (4.0 * d * d)
