"""Maximum mean discrepancy (MMD) between two batches of latents, a differentiable loss.

MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y) (Gretton et al. 2012), with k a sum of Gaussian
kernels. Training adds lambda * MMD^2(z_Y10, z_Y1) to the cross-entropy so that the encoder maps
the ten-year and one-year images of the galaxies to the same distribution of latents.

Two sets of kernel widths:

``bandwidth="batch"`` (default): five kernels exp(-d^2 / (2^j * mean_d2)), j = -2..2, where
mean_d2 is the mean squared distance between distinct points of the pooled batch (x and y
together). These are the kernels of DAN's multi-kernel MMD as its common PyTorch copies choose
them; written as exp(-d^2 / (2 s)) they are s = 2^k * mean_d2 with k = -3..1. The middle kernel
falls off at the batch's typical distance and the others reach two octaves either side, so the
loss sees both the local and the global structure whatever the latents' scale. Because the widths
follow the batch, the value is unchanged when all latents are scaled by a common factor, so the
loss cannot be lowered by shrinking or inflating the latent space. The widths are not detached:
the gradient is then the exact gradient of that scale-free value, with no component along the
overall scale, whereas a detached width leaves a spurious pull on the scale.

``bandwidth="fixed"``: the authors' released code: 19 kernels exp(-d^2 / (2 s)) with s in
``AUTHORS_VARIANCES`` (squared latent units), the list of Bousmalis et al.'s Domain Separation
Networks: decades from 1e-6 to 1e6 with 5 ... 35 in steps of 5 added between 1 and 100, so not
evenly spaced in log s. The authors also clamp the loss at 1e-4, which zeroes its gradient once
the domains are close; that clamp is not reproduced.

In both the kernels are summed, not averaged, as the authors and DAN do (a mean would divide the
loss, and so the effective lambda, by the number of kernels). The estimate is the biased
V-statistic by default (all pairs, self-pairs included; never negative beyond rounding; the
authors' choice); ``unbiased=True`` gives the U-statistic, which drops the self-pairs within each
sample and can be slightly negative.
"""

from __future__ import annotations

import torch

from .pairs import check_pair

BATCH_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)  # kernel widths in units of the batch's mean squared distance
AUTHORS_VARIANCES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0,
                     100.0, 1e3, 1e4, 1e5, 1e6)
BANDWIDTHS = ("batch", "fixed")


def mmd2(x: torch.Tensor, y: torch.Tensor, *, bandwidth: str = "batch", unbiased: bool = False) -> torch.Tensor:
    """Squared MMD between samples ``x`` (n, d) and ``y`` (m, d), a 0-d tensor that carries gradient.

    bandwidth: "batch" (widths scaled from the pooled batch) or "fixed" (the authors' 19 widths).
    unbiased: the U-statistic instead of the biased V-statistic; needs n, m >= 2.
    See the module docstring for both choices.
    """
    _check(x, y, bandwidth, unbiased)
    n = x.shape[0]
    pooled = torch.cat([x, y])
    d2 = _squared_distances(pooled)
    if bandwidth == "batch":
        count = pooled.shape[0] * (pooled.shape[0] - 1)
        # The diagonal is zero, so the full sum over count off-diagonal pairs is their mean.
        mean_d2 = (d2.sum() / count).clamp_min(torch.finfo(d2.dtype).tiny)
        widths = mean_d2 * d2.new_tensor(BATCH_SCALES)
    else:
        widths = 2.0 * d2.new_tensor(AUTHORS_VARIANCES)
    k = torch.exp(-d2.unsqueeze(0) / widths.view(-1, 1, 1)).sum(0)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    if unbiased:
        return _off_diagonal_mean(kxx) + _off_diagonal_mean(kyy) - 2.0 * kxy.mean()
    return kxx.mean() + kyy.mean() - 2.0 * kxy.mean()


def _squared_distances(z: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances (N, N) of the rows of ``z``, O(N^2 + N d) memory."""
    sq = (z * z).sum(1)
    # Rounding can leave tiny negatives where points coincide; a distance is never negative.
    return (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * z @ z.T).clamp_min(0.0)


def _off_diagonal_mean(k: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    return (k.sum() - k.diagonal().sum()) / (n * (n - 1))


def _check(x, y, bandwidth, unbiased) -> None:
    check_pair("mmd2", x, y)
    if bandwidth not in BANDWIDTHS:
        raise ValueError(f"mmd2: bandwidth must be one of {BANDWIDTHS}, got {bandwidth!r}")
    if unbiased and min(x.shape[0], y.shape[0]) < 2:
        raise ValueError(f"mmd2: the unbiased estimate needs at least 2 points per sample, "
                         f"got n={x.shape[0]}, m={y.shape[0]}")
