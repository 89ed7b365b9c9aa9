"""Synthetic galaxies of three morphologies, as GalSim profiles with colours in g, r, i.

A :class:`Galaxy` is a list of components, each a unit-flux GalSim profile (sizes in arcsec) with
an r-band share of the total flux and an AB colour. ``galaxy.profile(band)`` scales every
component to its flux in that band (e-/s) and sums them. At z ~ 0.05 one arcsec is ~1 kpc.

- spiral: inclined exponential disk, small de Vaucouleurs bulge, two logarithmic spiral arms and
  blue star-forming knots (``galsim.RandomKnots``);
- elliptical: a smooth, red Sersic spheroid, n ~ 3-4.5;
- merger: two progenitors a few arcsec apart, sheared (disturbed), with curved tidal tails.

Every parameter is drawn from the distributions in the ``generate.<class>`` config sections with a
``numpy.random.Generator`` seeded from (seed, galaxy index).
"""

from __future__ import annotations

from dataclasses import dataclass

import galsim
import numpy as np

from .morphology import ELLIPTICAL, MERGER, SPIRAL
from .survey import Band

# AB colours (g - r, r - i) of the stellar populations the components stand for.
RED = (0.75, 0.40)        # old spheroids and bulges
DISK = (0.50, 0.25)
ARMS = (0.35, 0.15)
KNOTS = (0.10, 0.05)      # young star-forming regions
TIDAL = (0.45, 0.20)
COLOUR_SCATTER = 0.05     # mag, per galaxy and component


@dataclass(frozen=True)
class Component:
    """A unit-flux profile (arcsec), its share of the r-band flux and its (g - r, r - i) colour, mag."""

    profile: galsim.GSObject
    share: float
    colour: tuple[float, float]

    def band_flux(self, mag_r: float, band: Band) -> float:
        """Count rate in ``band``, e-/s, given the galaxy's total r-band AB magnitude."""
        g_r, r_i = self.colour
        offset = {"g": g_r, "r": 0.0, "i": -r_i}[band.name]  # m_band - m_r, mag
        return self.share * band.flux_rate(mag_r + offset)


@dataclass(frozen=True)
class Galaxy:
    """A synthetic galaxy: intended class, total r magnitude (AB), main half-light radius (arcsec)."""

    kind: int
    mag_r: float
    hlr: float
    components: tuple[Component, ...]

    def profile(self, band: Band) -> galsim.GSObject:
        """The galaxy in ``band``, flux in e-/s (before the PSF)."""
        return galsim.Add([c.profile.withFlux(c.band_flux(self.mag_r, band)) for c in self.components])


def _uniform(rng: np.random.Generator, bounds) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _log_uniform(rng: np.random.Generator, bounds) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def _colour(rng: np.random.Generator, base: tuple[float, float]) -> tuple[float, float]:
    return tuple(float(c + rng.normal(0.0, COLOUR_SCATTER)) for c in base)


def _chain(xs, ys, weights, width: float) -> galsim.GSObject:
    """Light along a curve: point sources at (xs, ys) arcsec, smoothed by a Gaussian of sigma ``width``."""
    weights = np.asarray(weights, dtype=float)
    weights = weights / weights.sum()
    points = galsim.Add([galsim.DeltaFunction(flux=float(w)).shift(float(x), float(y))
                         for x, y, w in zip(xs, ys, weights)])
    return galsim.Convolve(points, galsim.Gaussian(sigma=width))


def _spiral_arms(rng: np.random.Generator, hlr: float, n_arms: int = 2, n_points: int = 30) -> galsim.GSObject:
    """Logarithmic spiral arms, r = r_in exp(tan(pitch) t), brightest where the disk is."""
    pitch = np.radians(rng.uniform(12.0, 28.0))
    r_in, r_out = 0.35 * hlr, 2.6 * hlr
    t = np.linspace(0.0, np.log(r_out / r_in) / np.tan(pitch), n_points)
    r = r_in * np.exp(np.tan(pitch) * t)
    scale_radius = hlr / 1.678  # exponential disk
    phase = rng.uniform(0.0, 2.0 * np.pi)
    xs, ys, ws = [], [], []
    for k in range(n_arms):
        theta = phase + 2.0 * np.pi * k / n_arms + t
        xs.append(r * np.cos(theta))
        ys.append(r * np.sin(theta))
        ws.append(r * np.exp(-r / scale_radius))  # disk surface brightness times arc length
    return _chain(np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), width=0.12 * hlr + 0.1)


def _tidal_tail(rng: np.random.Generator, x0: float, y0: float, hlr: float, n_points: int = 24) -> galsim.GSObject:
    """A curved, fading arc of stars pulled out of a progenitor at (x0, y0) arcsec."""
    radius = rng.uniform(1.5, 3.5) * hlr
    sweep = np.radians(rng.uniform(60.0, 150.0)) * rng.choice([-1.0, 1.0])
    start = rng.uniform(0.0, 2.0 * np.pi)
    s = np.linspace(0.0, 1.0, n_points)
    angle = start + sweep * s
    # The arc starts at the nucleus: its centre of curvature sits one radius away.
    cx, cy = x0 - radius * np.cos(start), y0 - radius * np.sin(start)
    xs, ys = cx + radius * np.cos(angle), cy + radius * np.sin(angle)
    return _chain(xs, ys, np.exp(-2.5 * s), width=0.3 * hlr + 0.15)


def spiral(rng: np.random.Generator, p, knot_seed: int) -> Galaxy:
    """An inclined disk galaxy with bulge, arms and knots. ``p``: the ``generate.spiral`` section."""
    hlr = _log_uniform(rng, p.hlr)
    q, beta = _uniform(rng, p.q), rng.uniform(0.0, np.pi) * galsim.radians
    f_bulge, f_arms, f_knots = (_uniform(rng, p.bulge_fraction), _uniform(rng, p.arm_fraction),
                                _uniform(rng, p.knot_fraction))
    f_disk = max(1.0 - f_bulge - f_arms - f_knots, 0.05)
    disk_plane = galsim.Shear(q=q, beta=beta)
    knots = galsim.RandomKnots(npoints=int(rng.integers(15, 50)), half_light_radius=hlr,
                               rng=galsim.BaseDeviate(knot_seed))
    components = (
        Component(galsim.Exponential(half_light_radius=hlr).shear(disk_plane), f_disk, _colour(rng, DISK)),
        Component(_spiral_arms(rng, hlr).shear(disk_plane), f_arms, _colour(rng, ARMS)),
        Component(galsim.Convolve(knots, galsim.Gaussian(sigma=0.08)).shear(disk_plane), f_knots, _colour(rng, KNOTS)),
        Component(galsim.DeVaucouleurs(half_light_radius=rng.uniform(0.1, 0.25) * hlr)
                  .shear(q=np.sqrt(q), beta=beta), f_bulge, _colour(rng, RED)),
    )
    return Galaxy(SPIRAL, _uniform(rng, p.mag_r), hlr, _normalised(components))


def elliptical(rng: np.random.Generator, p) -> Galaxy:
    """A smooth red spheroid. ``p``: the ``generate.elliptical`` section."""
    hlr = _log_uniform(rng, p.hlr)
    # Rounding n keeps GalSim's per-index Sersic tables few (they cost ~0.1 s to build, then are cached).
    n = round(_uniform(rng, p.sersic_n) * 4.0) / 4.0
    body = galsim.Sersic(n=n, half_light_radius=hlr).shear(q=_uniform(rng, p.q),
                                                           beta=rng.uniform(0.0, np.pi) * galsim.radians)
    return Galaxy(ELLIPTICAL, _uniform(rng, p.mag_r), hlr, (Component(body, 1.0, _colour(rng, RED)),))


def _progenitor(rng: np.random.Generator, hlr: float) -> tuple[galsim.GSObject, tuple[float, float]]:
    """A disk or a spheroid, sheared as by the encounter."""
    g = rng.uniform(0.1, 0.4)
    beta = rng.uniform(0.0, np.pi) * galsim.radians
    if rng.random() < 0.3:
        return galsim.Exponential(half_light_radius=hlr).shear(g=g, beta=beta), DISK
    n = round(rng.uniform(2.0, 4.0) * 4.0) / 4.0
    return galsim.Sersic(n=n, half_light_radius=hlr).shear(g=g, beta=beta), RED


def merger(rng: np.random.Generator, p, knot_seed: int) -> Galaxy:
    """Two progenitors and their tidal tails. ``p``: the ``generate.merger`` section."""
    hlr = _log_uniform(rng, p.hlr)
    hlr2 = hlr * rng.uniform(0.5, 1.0)
    sep, ratio = _uniform(rng, p.separation), _uniform(rng, p.flux_ratio)
    phi = rng.uniform(0.0, 2.0 * np.pi)
    # Place the nuclei about their light-weighted centre, which sits at the stamp centre.
    x1, y1 = -sep / (1 + ratio) * np.cos(phi), -sep / (1 + ratio) * np.sin(phi)
    x2, y2 = sep * ratio / (1 + ratio) * np.cos(phi), sep * ratio / (1 + ratio) * np.sin(phi)
    f_tidal = _uniform(rng, p.tidal_fraction)
    f1, f2 = (1 - f_tidal) * ratio / (1 + ratio), (1 - f_tidal) / (1 + ratio)
    body1, col1 = _progenitor(rng, hlr)
    body2, col2 = _progenitor(rng, hlr2)
    n_tails = int(rng.integers(1, 3))
    tails = [_tidal_tail(rng, *(x1, y1) if k == 0 else (x2, y2), hlr) for k in range(n_tails)]
    burst = galsim.Convolve(galsim.RandomKnots(npoints=int(rng.integers(5, 20)), half_light_radius=hlr,
                                               rng=galsim.BaseDeviate(knot_seed)), galsim.Gaussian(sigma=0.08))
    components = (
        Component(body1.shift(x1, y1), f1 * 0.9, _colour(rng, col1)),
        Component(burst.shift(x1, y1), f1 * 0.1, _colour(rng, KNOTS)),
        Component(body2.shift(x2, y2), f2, _colour(rng, col2)),
        *(Component(t, f_tidal / n_tails, _colour(rng, TIDAL)) for t in tails),
    )
    return Galaxy(MERGER, _uniform(rng, p.mag_r), hlr, _normalised(components))


def _normalised(components: tuple[Component, ...]) -> tuple[Component, ...]:
    total = sum(c.share for c in components)
    return tuple(Component(c.profile, c.share / total, c.colour) for c in components)


def draw(kind: int, rng: np.random.Generator, section, knot_seed: int) -> Galaxy:
    """A galaxy of intended class ``kind`` (0 spiral, 1 elliptical, 2 merger). ``section``: ``cfg.generate``."""
    if kind == SPIRAL:
        return spiral(rng, section.spiral, knot_seed)
    if kind == ELLIPTICAL:
        return elliptical(rng, section.elliptical)
    return merger(rng, section.merger, knot_seed)
