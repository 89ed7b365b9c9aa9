"""Where galaxies come from, each one addressable by its index.

- :class:`SyntheticSource` draws GalSim galaxies (``galaxies.py``) and observes them;
- :class:`CutoutSource` observes external noiseless cutouts (e.g. IllustrisTNG images a user
  downloaded) from a FITS or HDF5 cube (N, bands, H, W) in stated units;
- :class:`ObservedSource` ingests already-observed Y10/Y1 ``.npy`` arrays in the layout of the
  authors' released data (N, 3, H, W) with one-hot labels (N, 3), or class indices (N,).

Each source checks its whole input when it opens, the same way on every rank (finite pixels, a
positive flux per cutout and band, one-hot labels, at least one galaxy), so a bad file ends the
run before anything is drawn, and drawing trusts what it reads.

``source.draw(index)`` is a pure function of (config, index): all randomness is seeded from
``SeedSequence([run.seed, index])``, so any rank may draw any galaxy and get the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import galsim
import numpy as np

from ..errors import SourceError
from . import galaxies, survey
from .noise import observe

NANOMAGGY_MAG = 22.5  # AB magnitude of 1 nanomaggy




@dataclass
class Drawn:
    """One galaxy, all images (bands, H, W) float32 in e-/s per pixel (sky-subtracted)."""

    clean: np.ndarray
    y10: np.ndarray
    y1: np.ndarray
    intended: int = -1      # generator's class, -1 when unknown
    given_label: int = -1   # label supplied with the data (observed source), -1 when none
    mag_r: float = np.nan   # total r magnitude, AB
    hlr: float = np.nan     # main half-light radius, arcsec


def _seeds(seed: int, index: int) -> tuple[np.random.Generator, list[int]]:
    """The galaxy's parameter generator and 8 integer seeds for GalSim, from (seed, index)."""
    params, noise = np.random.SeedSequence([seed, index]).spawn(2)
    # GalSim treats seed 0 as "seed from the clock": keep every seed in [1, 2^31 - 1).
    ints = [int(s) % (2 ** 31 - 2) + 1 for s in noise.generate_state(8)]
    return np.random.default_rng(params), ints


class _Observer:
    """Y10 and Y1 exposures of one noiseless image (same PSF draw, independent noise)."""

    def __init__(self, g):
        self.bands = survey.bands(g.bands)
        self.size, self.scale, self.y1_fraction = g.image_size, g.pixel_scale, g.y1_fraction

    def __call__(self, clean: np.ndarray, noise_seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
        y10, y1 = np.empty_like(clean), np.empty_like(clean)
        for k, band in enumerate(self.bands):
            sky = band.sky_rate(self.scale)
            y10[k] = observe(clean[k], sky, band.exposure(1.0), noise_seeds[2 * k])
            y1[k] = observe(clean[k], sky, band.exposure(self.y1_fraction), noise_seeds[2 * k + 1])
        return y10, y1

    def render(self, profile: galsim.GSObject, psf: galsim.GSObject) -> np.ndarray:
        """PSF-convolved, pixel-integrated image, in the profile's flux unit per pixel."""
        image = galsim.Convolve(profile, psf).drawImage(nx=self.size, ny=self.size, scale=self.scale)
        return image.array


class SyntheticSource:
    """GalSim galaxies of the three morphologies, in the proportions of ``generate.class_fractions``."""

    units = "e-/s per pixel, sky-subtracted"

    def __init__(self, cfg):
        self.g = cfg.generate
        self.seed = cfg.run.seed
        self.observer = _Observer(self.g)
        self.fractions = np.asarray(self.g.class_fractions, dtype=float)
        self.psfs = [b.psf() for b in self.observer.bands]

    def __len__(self) -> int:
        return self.g.n_galaxies

    def draw(self, index: int) -> Drawn:
        rng, seeds = _seeds(self.seed, index)
        kind = int(rng.choice(3, p=self.fractions))
        galaxy = galaxies.draw(kind, rng, self.g, knot_seed=seeds[6])
        psfs = self.psfs
        if self.g.psf_fwhm_scatter > 0:
            scale = float(np.clip(1.0 + self.g.psf_fwhm_scatter * rng.standard_normal(), 0.5, 2.0))
            psfs = [b.psf(scale) for b in self.observer.bands]
        clean = np.stack([self.observer.render(galaxy.profile(b), p) for b, p in zip(self.observer.bands, psfs)])
        clean = clean.astype(np.float32)
        y10, y1 = self.observer(clean, seeds)
        return Drawn(clean, y10, y1, intended=kind, mag_r=galaxy.mag_r, hlr=galaxy.hlr)


def _check_cutouts(cube, path: Path, bands: list[str], chunk_bytes: int = 2 ** 26) -> None:
    """Every cutout finite, with a positive total flux in every band (what GalSim's flux
    normalisation divides by). Read a few at a time: the cube may be larger than memory."""
    n = int(cube.shape[0])
    if n == 0:
        raise SourceError(f"{path}: the cube holds no cutouts (shape {tuple(cube.shape)}); expected at least one "
                          "image (N, bands, H, W)")
    per_image = max(1, int(np.prod(cube.shape[1:])) * 8)
    step = max(1, chunk_bytes // per_image)
    for lo in range(0, n, step):
        part = np.asarray(cube[lo:lo + step], dtype=np.float64)
        finite = np.isfinite(part).all(axis=(1, 2, 3))
        if not finite.all():
            raise SourceError(f"{path}: cutout {lo + int(np.argmin(finite))} has non-finite pixels")
        flux = part.sum(axis=(2, 3))
        bad = np.argwhere(~(flux > 0))
        if len(bad):
            i, b = (int(x) for x in bad[0])
            raise SourceError(f"{path}: cutout {lo + i} has no positive flux in band {bands[b]} (its pixels sum to "
                              f"{flux[i, b]:g}); noiseless cutouts need a positive total flux in every band")


def class_indices(labels: np.ndarray, path) -> np.ndarray:
    """Class indices (N,) int8 from observed labels: one-hot rows (N, 3) (spiral, elliptical, merger),
    or integer class indices (N,) in {0, 1, 2}. Anything else is refused, never guessed by argmax."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        if not np.issubdtype(labels.dtype, np.integer):
            raise SourceError(f"{path}: 1-D labels are read as class indices and must be integers 0, 1, 2; got dtype "
                              f"{labels.dtype} (one-hot labels are shaped (N, 3))")
        bad = np.flatnonzero((labels < 0) | (labels > 2))
        if len(bad):
            raise SourceError(f"{path}: label {int(bad[0])} is {labels[bad[0]]}, but class indices must be 0 (spiral), "
                              f"1 (elliptical) or 2 (merger) ({len(bad)} such labels)")
        return labels.astype(np.int8)
    if labels.ndim != 2 or labels.shape[1] != 3:
        raise SourceError(f"{path}: expected one-hot labels (N, 3) or class indices (N,), got shape {labels.shape}")
    one_hot = np.all((labels == 0) | (labels == 1), axis=1) & (np.sum(labels == 1, axis=1) == 1)
    bad = np.flatnonzero(~one_hot)
    if len(bad):
        raise SourceError(f"{path}: row {int(bad[0])} of the labels is {labels[bad[0]].tolist()}, not one-hot "
                          f"({len(bad)} of {len(labels)} rows): each row needs one 1 and two 0s (spiral, elliptical, "
                          "merger), or give class indices as a 1-D integer array (N,)")
    return np.argmax(labels, axis=1).astype(np.int8)


def _read_cube(path: Path, dataset: str | None):
    """A lazily read (N, bands, H, W) array from FITS (primary HDU) or HDF5."""
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".fits", ".fit", ".fz"):
            from astropy.io import fits

            cube = fits.open(path, memmap=True)[0].data
        else:
            import h5py

            f = h5py.File(path, "r")
            if dataset not in f:
                raise SourceError(f"{path}: no dataset '{dataset}' (found: {', '.join(f.keys()) or 'none'})")
            cube = f[dataset]
    except SourceError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
        raise SourceError(f"{path}: cannot read as FITS or HDF5 ({err})") from None
    if cube is None or cube.ndim != 4:
        raise SourceError(f"{path}: expected a 4-D array (N, bands, H, W), got shape {getattr(cube, 'shape', None)}")
    return cube


class CutoutSource:
    """External noiseless cutouts, PSF-convolved and observed here like the synthetic galaxies."""

    units = "e-/s per pixel, sky-subtracted"

    def __init__(self, cfg):
        self.g = cfg.generate
        self.seed = cfg.run.seed
        c = self.g.cutouts
        self.path, self.cube = Path(c.path), _read_cube(Path(c.path), c.dataset)
        if self.cube.shape[1] != len(self.g.bands):
            raise SourceError(f"{self.path}: {self.cube.shape[1]} bands in axis 1, "
                              f"but generate.bands is {self.g.bands}")
        _check_cutouts(self.cube, self.path, list(self.g.bands))
        self.in_scale = c.pixel_scale
        self.observer = _Observer(self.g)
        # Per-band factor from the file's units to e-/s.
        self.to_rate = [1.0 if c.units == "e-/s" else b.flux_rate(NANOMAGGY_MAG) for b in self.observer.bands]
        self.psfs = [b.psf() for b in self.observer.bands]

    def __len__(self) -> int:
        return int(self.cube.shape[0])

    def draw(self, index: int) -> Drawn:
        _, seeds = _seeds(self.seed, index)
        raw = np.asarray(self.cube[index], dtype=np.float64)
        if not np.all(np.isfinite(raw)):
            raise SourceError(f"{self.path}: cutout {index} has non-finite pixels")
        clean = np.empty((len(self.psfs), self.g.image_size, self.g.image_size), np.float32)
        for k, psf in enumerate(self.psfs):
            # Pixel values are fluxes per pixel: normalization='flux' keeps the total.
            model = galsim.InterpolatedImage(galsim.ImageD(raw[k] * self.to_rate[k], scale=self.in_scale),
                                             normalization="flux")
            clean[k] = self.observer.render(model, psf)
        y10, y1 = self.observer(clean, seeds)
        return Drawn(clean, y10, y1)


class ObservedSource:
    """Already-observed Y10/Y1 arrays with one-hot labels; no noiseless image exists (clean is NaN)."""

    units = "as given in the input arrays"

    def __init__(self, cfg):
        o = cfg.generate.observed
        arrays = {}
        for name in ("y10", "y1", "labels"):
            path = Path(getattr(o, name))
            try:
                arrays[name] = np.load(path, mmap_mode="r")
            except FileNotFoundError:
                raise SourceError(f"{path}: no such file (generate.observed.{name})") from None
            except ValueError as err:
                raise SourceError(f"{path}: not a readable .npy array ({err})") from None
        y10, y1, labels = arrays["y10"], arrays["y1"], arrays["labels"]
        size, nb = cfg.generate.image_size, len(cfg.generate.bands)
        for name, arr in (("y10", y10), ("y1", y1)):
            if arr.ndim != 4 or arr.shape[1:] != (nb, size, size):
                raise SourceError(f"{getattr(o, name)}: expected shape (N, {nb}, {size}, {size}) "
                                  f"(generate.bands, generate.image_size), got {arr.shape}")
        if not (len(y10) == len(y1) == len(labels)):
            raise SourceError(f"observed arrays disagree: y10 {y10.shape}, y1 {y1.shape}, labels {labels.shape} "
                              "(expected N images each and one-hot labels (N, 3) or class indices (N,))")
        if len(y10) == 0:
            raise SourceError(f"{o.y10}: no images (shape {y10.shape}); expected at least one")
        self.y10, self.y1, self.labels = y10, y1, class_indices(labels, o.labels)

    def __len__(self) -> int:
        return int(self.y10.shape[0])

    def draw(self, index: int) -> Drawn:
        y10 = np.asarray(self.y10[index], dtype=np.float32)
        y1 = np.asarray(self.y1[index], dtype=np.float32)
        if not (np.all(np.isfinite(y10)) and np.all(np.isfinite(y1))):
            raise SourceError(f"observed image {index} has non-finite pixels")
        return Drawn(np.full_like(y10, np.nan), y10, y1, given_label=int(self.labels[index]))


SOURCES = {"synthetic": SyntheticSource, "cutouts": CutoutSource, "observed": ObservedSource}


def open_source(cfg):
    return SOURCES[cfg.generate.source](cfg)
