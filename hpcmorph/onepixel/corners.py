"""Corner candidates: pixels set to a corner of the value box, and the fixed order they are scanned in.

A corner sets every band of a pixel to its lower or upper bound: corner ``c`` (0 .. 2^C - 1) puts
band b at the upper bound iff bit b of c is set (corner 0: all bands low; 2^C - 1: all high). The
best single-pixel value is usually at a corner (DE ends on a bound most of the time; Croce and
Hein's CornerSearch builds on the same fact), so the exhaustive search, Sparse-RS and the saliency
ranking all work on corners.

Scan order of the H x W x 2^C single-pixel candidates of an image: candidate ``q`` (0-based) is the
pixel at position ``p = q // 2^C`` (row-major: ``y = p // W``, ``x = p % W``, from the image's first
row and column) at corner ``q % 2^C``.

Candidates are written as genomes of :mod:`.pixels` (``[x, y, v_1 .. v_C]`` per pixel, positions as
whole numbers), so every method is classified by the same objective.

The value box. By default (``attack.pixel_range`` null, and adversarial training) a corner value is
one of the data's own bounds: the model's asinh stretch of its clip limits (:func:`data_range`), so
a corner pixel is a pixel at the clip limits in e-/s, a value the model meets in data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    """Where candidates live: k pixels of an H x W image, each band's value in [lows, highs].

    lows, highs: (C,) value bounds per band (normalised units).
    """

    height: int
    width: int
    pixels: int
    lows: tuple
    highs: tuple

    @classmethod
    def of(cls, pixels: int, bands: int, height: int, width: int, value_range) -> Box:
        """As :func:`.pixels.bounds` takes it: ``value_range`` is (low, high) or per-band (lows, highs)."""
        lo, hi = (np.broadcast_to(np.asarray(v, np.float64), (bands,)) for v in value_range)
        return cls(int(height), int(width), int(pixels), tuple(map(float, lo)), tuple(map(float, hi)))

    @property
    def bands(self) -> int:
        return len(self.lows)

    @property
    def n_corners(self) -> int:
        return 2 ** self.bands

    @property
    def positions(self) -> int:
        return self.height * self.width

    def table(self) -> np.ndarray:
        """(2^C, C) float64: the values of every corner, corner ``c`` in row c."""
        bits = (np.arange(self.n_corners)[:, None] >> np.arange(self.bands)[None, :]) & 1
        return np.where(bits == 1, np.asarray(self.highs), np.asarray(self.lows))

    def genomes(self, position, corner) -> np.ndarray:
        """Genomes (..., k (2 + C)) float64 of pixels at flat ``position`` (..., k) (``y W + x``) set to
        corners ``corner`` (..., k)."""
        return genomes(position, corner, self.table(), self.width)


def genomes(position, corner, values: np.ndarray, width: int) -> np.ndarray:
    """Genomes (..., k (2 + C)) float64 of pixels at flat ``position`` (..., k) (``y W + x``) set to
    corners ``corner`` (..., k) of the corner ``values`` table (2^C, C)."""
    position, corner = np.asarray(position, np.int64), np.asarray(corner, np.int64)
    x, y = position % width, position // width
    genes = np.concatenate([x[..., None].astype(np.float64), y[..., None].astype(np.float64), values[corner]], -1)
    return genes.reshape(*position.shape[:-1], -1)


def scan(q, n_corners: int) -> tuple[np.ndarray, np.ndarray]:
    """(position, corner) of scan indices ``q`` (see the module docstring)."""
    q = np.asarray(q, np.int64)
    return q // n_corners, q % n_corners


def data_range(stretch) -> tuple[list[float], list[float]]:
    """(lows, highs), one per fitted band: the range of normalised pixels, the stretch of its clip limits.

    stretch: the model's fitted :class:`~hpcmorph.train.normalize.AsinhStretch` (anything with ``low``,
    ``high`` in e-/s and called on (N, C, H, W) arrays).
    """
    lo = stretch(np.asarray(stretch.low, np.float64).reshape(1, -1, 1, 1)).ravel()
    hi = stretch(np.asarray(stretch.high, np.float64).reshape(1, -1, 1, 1)).ravel()
    return [float(v) for v in lo], [float(v) for v in hi]


def default_range(stretch) -> list[float]:
    """[low, high] for every band, normalised units: the widest of :func:`data_range`'s bands."""
    lo, hi = data_range(stretch)
    return [min(lo), max(hi)]
