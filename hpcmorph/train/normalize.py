"""The paper's asinh stretch of galaxy images, fitted on the training images only.

Pixels (count rates, e-/s per pixel, sky-subtracted, so noise makes some negative) are clipped to
[low, high], the 0.1 and 99.9 percentiles, then mapped by x -> (asinh(0.85 x / high) + 1) / 2:
``high`` goes to (asinh(0.85) + 1) / 2 = 0.885, zero to 0.5, and the faint negative tail just
below 0.5. The output is dimensionless.

The authors computed the percentiles separately on each array they normalised (train, test, Y1,
Y10), so the test set's own statistics leaked into its inputs and Y1 and Y10 images of one galaxy
were stretched differently. Here they are fitted once, on training images, stored with the model
(``to_dict``) and applied unchanged to every split and to both exposures.

Like the authors' code, the default takes one pair of percentiles over all bands together, which
keeps the g, r, i colours of a galaxy; ``per_band=True`` takes a pair per band instead, which
equalises the bands at the cost of those colours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

PERCENTILES = (0.1, 99.9)
SOFTENING = 0.85  # the authors' constant: asinh(0.85) ~ 0.77 at the upper clip


@dataclass(frozen=True)
class AsinhStretch:
    """Clip to [low, high], then x -> (asinh(softening * x / high) + 1) / 2.

    low, high: clip limits in the images' units (e-/s per pixel), one value for all bands or one
    per band. Build it with ``AsinhStretch.fit`` on training images, or ``from_dict`` from a saved
    model.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    softening: float = SOFTENING

    def __post_init__(self):
        low, high = _floats("low", self.low), _floats("high", self.high)
        if len(low) != len(high):
            raise ValueError(f"AsinhStretch: low and high need one value each per band, "
                             f"got {len(low)} and {len(high)}")
        for band, (lo, hi) in enumerate(zip(low, high)):
            if not hi > 0.0 or not hi > lo:
                raise ValueError(f"AsinhStretch: band {band}: need 0 < high and low < high, got "
                                 f"low={lo}, high={hi} (are the images blank or not sky-subtracted?)")
        softening = _floats("softening", self.softening)
        if len(softening) != 1 or not softening[0] > 0.0:
            raise ValueError(f"AsinhStretch: softening must be one positive number, got {self.softening!r}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "softening", softening[0])

    @classmethod
    def fit(cls, images, *, rows=None, per_band: bool = False, max_images: int = 2048,
            seed: int = 0) -> AsinhStretch:
        """Fit the clip limits on training images.

        images: array-like (N, C, H, W), e-/s per pixel: a numpy array or an h5py dataset (read one
            image at a time, so a large file is never loaded whole).
        rows: the training rows of ``images`` (integer indices or a boolean mask of length N),
            e.g. ``split == 0`` of galaxies.h5; default all rows.
        per_band: one pair of percentiles per band instead of one over all bands.
        max_images, seed: the percentiles come from at most ``max_images`` of those rows, drawn
            without replacement by ``numpy.random.default_rng(seed)``, so the same inputs always
            give the same limits. 2048 images of 100 x 100 give over 6e7 pixels, far more than the
            0.1 percentile needs, and bound memory (2048 x 3 x 100 x 100 float32 is 245 MB).
        """
        shape = tuple(getattr(images, "shape", ()))
        if len(shape) != 4:
            raise ValueError(f"AsinhStretch.fit: images must be shaped (N, C, H, W), got shape {shape}")
        if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
            raise ValueError(f"AsinhStretch.fit: max_images must be a positive integer, got {max_images!r}")
        rows = _rows(rows, shape[0])
        if len(rows) > max_images:
            rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_images, replace=False))
        sample = np.empty((len(rows),) + shape[1:], dtype=np.float32)
        for k, row in enumerate(rows):
            sample[k] = images[int(row)]
        bad = ~np.isfinite(sample)
        if bad.any():
            where = rows[np.flatnonzero(bad.any(axis=(1, 2, 3)))]
            raise ValueError(f"AsinhStretch.fit: {int(bad.sum())} non-finite pixels in the training images, "
                             f"first in row {int(where[0])} ({len(where)} images affected)")
        if per_band:
            low, high = np.percentile(sample, PERCENTILES, axis=(0, 2, 3))
        else:
            low, high = np.percentile(sample, PERCENTILES)
        return cls(low=np.atleast_1d(low), high=np.atleast_1d(high))

    @property
    def per_band(self) -> bool:
        return len(self.high) > 1

    def transform(self, x):
        """Stretched copy of images ``x`` (N, C, H, W): numpy in, numpy out; torch in, torch out.

        Floating inputs keep their dtype (and device); other inputs become float32.
        """
        if isinstance(x, torch.Tensor):
            if not x.is_floating_point():
                x = x.float()
            self._check(tuple(x.shape), bool(torch.isfinite(x).all()))
            low, high, scale = (torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
                                for v in self._constants())
            return (torch.asinh(torch.clamp(x, low, high) * scale) + 1.0) / 2.0
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        self._check(x.shape, bool(np.isfinite(x).all()))
        low, high, scale = (np.asarray(v, dtype=x.dtype).reshape(1, -1, 1, 1) for v in self._constants())
        return (np.arcsinh(np.clip(x, low, high) * scale) + 1.0) / 2.0

    __call__ = transform

    def to_dict(self) -> dict:
        """The fitted state as plain floats (JSON- and YAML-serialisable)."""
        return {"low": list(self.low), "high": list(self.high), "softening": self.softening}

    @classmethod
    def from_dict(cls, state: dict) -> AsinhStretch:
        """Inverse of ``to_dict``."""
        keys = {"low", "high", "softening"}
        if not isinstance(state, dict) or set(state) != keys:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"AsinhStretch.from_dict: expected a dict with keys {sorted(keys)}, got {got}")
        return cls(**state)

    def _constants(self) -> tuple[list[float], list[float], list[float]]:
        # Computed in float64 once, then cast, so numpy and torch multiply by the same number.
        return list(self.low), list(self.high), [self.softening / h for h in self.high]

    def _check(self, shape: tuple, finite: bool) -> None:
        if len(shape) != 4:
            raise ValueError(f"AsinhStretch.transform: images must be shaped (N, C, H, W), got shape {shape}")
        if self.per_band and shape[1] != len(self.high):
            raise ValueError(f"AsinhStretch.transform: fitted per band on {len(self.high)} bands, "
                             f"got images with {shape[1]} channels")
        if not finite:
            raise ValueError("AsinhStretch.transform: images contain NaN or infinite pixels")


def _floats(name: str, value) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel())
    except (TypeError, ValueError):
        raise ValueError(f"AsinhStretch: {name} must be a number or a list of numbers, got {value!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise ValueError(f"AsinhStretch: {name} must be finite numbers, got {value!r}")
    return out


def _rows(rows, n: int) -> np.ndarray:
    if rows is None:
        return np.arange(n)
    rows = np.asarray(rows)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise ValueError(f"AsinhStretch.fit: a boolean rows mask must have shape ({n},), got {rows.shape}")
        rows = np.flatnonzero(rows)
    elif rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"AsinhStretch.fit: rows must be 1-d integer indices or a boolean mask, "
                         f"got dtype {rows.dtype}, shape {rows.shape}")
    if len(rows) == 0:
        raise ValueError("AsinhStretch.fit: rows selects no images")
    if rows.min() < 0 or rows.max() >= n:
        raise ValueError(f"AsinhStretch.fit: rows must lie in [0, {n}), got {int(rows.min())} .. {int(rows.max())}")
    return rows

