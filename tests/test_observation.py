"""The LSST observing model, the noise model and the synthetic galaxies."""

import galsim
import numpy as np
import pytest

from hpcmorph import config
from hpcmorph.generate import survey
from hpcmorph.generate.morphology import ELLIPTICAL, MERGER, SPIRAL
from hpcmorph.generate.noise import observe
from hpcmorph.generate.sources import SyntheticSource


def test_sky_and_flux_follow_the_notes_formulae():
    r = survey.LSST["r"]
    # Sky per pixel (e-) = 10^(-0.4 (sky - zeropoint)) * exposure * pixel_area.
    assert r.sky_rate(0.2) * r.exposure(1.0) == pytest.approx(10 ** (-0.4 * (21.20 - 28.10)) * 5520 * 0.04)
    assert r.flux_rate(28.10) == pytest.approx(1.0)
    assert survey.LSST["g"].exposure(0.1) == pytest.approx(240.0)


def test_psf_has_the_band_fwhm_broadened_by_the_optics():
    for band in survey.LSST.values():
        fwhm = band.psf().drawImage(nx=64, ny=64, scale=0.02, method="no_pixel").calculateFWHM()
        assert band.psf_fwhm < fwhm < band.psf_fwhm * 1.15


def test_observe_is_unbiased_with_poisson_variance_and_seeded():
    rate = np.full((64, 64), 5.0)          # e-/s per pixel
    sky, t = 20.0, 100.0
    img = observe(rate, sky, t, seed=11)
    assert img.dtype == np.float32
    assert img.mean() == pytest.approx(5.0, abs=0.05)
    # Var(counts) = (source + sky) * t, in rate units divided by t^2.
    assert img.var() == pytest.approx((5.0 + sky) / t, rel=0.1)
    np.testing.assert_array_equal(img, observe(rate, sky, t, seed=11))
    assert not np.array_equal(img, observe(rate, sky, t, seed=12))


def test_y1_is_noisier_than_y10_by_the_exposure_ratio():
    src = SyntheticSource(config.load("tiny"))
    d = src.draw(0)
    r10, r1 = d.y10 - d.clean, d.y1 - d.clean
    corner = (slice(None), slice(0, 8), slice(0, 8))  # sky-dominated
    ratio = r1[corner].var() / r10[corner].var()
    assert 6.0 < ratio < 15.0  # expected 10 for a sky-limited corner


def test_same_index_same_pixels_other_index_other_pixels():
    cfg = config.load("tiny")
    a, b = SyntheticSource(cfg).draw(3), SyntheticSource(cfg).draw(3)
    for name in ("clean", "y10", "y1"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.y10, SyntheticSource(cfg).draw(4).y10)
    other_seed = SyntheticSource(config.load("tiny", ["run.seed=1"])).draw(3)
    assert not np.array_equal(a.clean, other_seed.clean)


def _first_of(src, kind, start=0):
    for i in range(start, start + 200):
        d = src.draw(i)
        if d.intended == kind:
            return d
    raise AssertionError(f"no galaxy of class {kind} in 200 draws")


def test_total_flux_matches_the_drawn_magnitude():
    src = SyntheticSource(config.load("laptop"))
    for kind in (SPIRAL, ELLIPTICAL, MERGER):
        d = _first_of(src, kind)
        expected = survey.LSST["r"].flux_rate(d.mag_r)
        # Light beyond the 20-arcsec stamp is lost: allow a few per cent.
        assert d.clean[1].sum() == pytest.approx(expected, rel=0.08)


def test_ellipticals_are_redder_than_spirals():
    src = SyntheticSource(config.load("laptop"))
    def g_minus_i(kind):
        colours = []
        for start in (0, 200, 400):
            d = _first_of(src, kind, start)
            colours.append(-2.5 * np.log10(d.clean[0].sum() / d.clean[2].sum()))
        return np.mean(colours)
    assert g_minus_i(ELLIPTICAL) > g_minus_i(SPIRAL) + 0.2


def test_class_fractions_are_respected():
    src = SyntheticSource(config.load("tiny", ["generate.class_fractions=[0, 0, 1]"]))
    assert {src.draw(i).intended for i in range(5)} == {MERGER}


def test_galsim_seed_zero_is_never_used():
    # GalSim seeds from the clock on 0: the derived seeds must avoid it.
    from hpcmorph.generate.sources import _seeds

    for index in range(200):
        _, seeds = _seeds(0, index)
        assert all(0 < s < 2 ** 31 for s in seeds)
    assert isinstance(galsim.BaseDeviate(seeds[0]), galsim.BaseDeviate)
