"""Observational noise: Poisson on source plus sky over an exposure, then the sky subtracted.

Images go in and out as count rates (e-/s per pixel), so a Y10 and a Y1 observation of one galaxy
have the same expected value and differ only in their signal-to-noise, as in the paper.
"""

from __future__ import annotations

import galsim
import numpy as np


def observe(rate: np.ndarray, sky_rate: float, exposure: float, seed: int) -> np.ndarray:
    """One noisy, sky-subtracted exposure of a noiseless image.

    rate: noiseless, PSF-convolved source count rate, e-/s per pixel (2-D).
    sky_rate: sky count rate, e-/s per pixel. exposure: s. seed: seeds this exposure's noise.
    Returns the observed count rate, e-/s per pixel (float32).
    """
    counts = galsim.ImageD(np.asarray(rate, dtype=np.float64) * exposure)
    # PoissonNoise adds the sky, draws Poisson counts of the total and subtracts the sky again.
    counts.addNoise(galsim.PoissonNoise(galsim.BaseDeviate(seed), sky_level=sky_rate * exposure))
    return (counts.array / exposure).astype(np.float32)
