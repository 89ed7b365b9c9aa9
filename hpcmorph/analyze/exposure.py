"""Accuracy against exposure: the test galaxies' noiseless images observed again at other exposures.

The ``clean`` column of galaxies.h5 (noiseless, PSF-convolved, e-/s per pixel) is observed with the
survey's sky and a fraction f of the ten-year exposure per band (f = 0.1 is Y1, 1.0 is Y10), as
``generate`` made Y10 and Y1 (``generate.noise.observe``), with fresh noise. The noise of galaxy row
r at fraction index j comes from ``SeedSequence([run.seed, STREAM, r, j])`` alone, one integer seed
per band: never from the rank or the batch.
"""

from __future__ import annotations

import numpy as np

from ..generate.noise import observe
from ..generate.survey import Band

STREAM = 21  # SeedSequence stream (attack uses 10 and 11, the isomap draw 20)
YEARS = 10.0  # the Y10 exposure, in survey years


def seeds(run_seed: int, row: int, fraction_index: int, n_bands: int) -> list[int]:
    """One GalSim seed per band for galaxy ``row`` at fraction ``fraction_index``."""
    state = np.random.SeedSequence([run_seed, STREAM, int(row), int(fraction_index)]).generate_state(n_bands)
    # GalSim reads seed 0 as "seed from the clock": keep every seed in [1, 2^31 - 1).
    return [int(s) % (2 ** 31 - 2) + 1 for s in state]


def reobserve(clean: np.ndarray, bands: list[Band], pixel_scale: float, fraction: float, band_seeds: list[int]
              ) -> np.ndarray:
    """A new observation (C, H, W), e-/s per pixel, sky-subtracted, of the noiseless image ``clean``
    (C, H, W), e-/s per pixel, after ``fraction`` of the ten-year exposure in every band."""
    return np.stack([observe(clean[k], band.sky_rate(pixel_scale), band.exposure(fraction), band_seeds[k])
                     for k, band in enumerate(bands)])


def has_clean(clean_sample: np.ndarray) -> bool:
    """Whether the data has noiseless images (observed data stores NaN there)."""
    return bool(np.all(np.isfinite(clean_sample)))
