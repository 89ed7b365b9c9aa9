"""The LSST observing model: bands, zero points, sky, exposure times and the PSF.

Numbers are the Rubin survey parameters as tabulated by LSST DESC. Magnitudes are AB; a band's
zero point is the magnitude that gives 1 e-/s; gain is 1 e-/ADU, so counts are electrons.
"""

from __future__ import annotations

from dataclasses import dataclass

import galsim

PIXEL_SCALE = 0.2          # arcsec / pixel
MIRROR_DIAMETER = 8.36     # m
OBSCURATION = 0.3926       # linear fraction of the aperture obscured by the secondary
AIRMASS = 1.2
GAIN = 1.0                 # e- / ADU
ARCSEC_PER_RADIAN = 206264.806


@dataclass(frozen=True)
class Band:
    """One LSST filter.

    name: filter letter; sky_mag: sky brightness, mag/arcsec^2; exposure_y10: total ten-year
    exposure, s; zeropoint: AB magnitude giving 1 e-/s; psf_fwhm: median delivered atmospheric
    FWHM, arcsec; wavelength: effective wavelength, nm.
    """

    name: str
    sky_mag: float
    exposure_y10: float
    zeropoint: float
    psf_fwhm: float
    wavelength: float

    def flux_rate(self, mag: float) -> float:
        """Count rate of a source of AB magnitude ``mag``, e-/s."""
        return 10.0 ** (-0.4 * (mag - self.zeropoint))

    def sky_rate(self, pixel_scale: float = PIXEL_SCALE) -> float:
        """Sky count rate in one pixel, e-/s."""
        return self.flux_rate(self.sky_mag) * pixel_scale ** 2

    def exposure(self, fraction: float = 1.0) -> float:
        """Exposure after ``fraction`` of the ten-year survey (Y1 = 0.1), s."""
        return self.exposure_y10 * fraction

    def psf(self, fwhm_scale: float = 1.0) -> galsim.GSObject:
        """Atmosphere (Kolmogorov) convolved with the telescope's obscured Airy pattern."""
        lam_over_diam = self.wavelength * 1e-9 / MIRROR_DIAMETER * ARCSEC_PER_RADIAN  # arcsec
        atmosphere = galsim.Kolmogorov(fwhm=self.psf_fwhm * fwhm_scale)
        optics = galsim.Airy(lam_over_diam=lam_over_diam, obscuration=OBSCURATION)
        return galsim.Convolve(atmosphere, optics)


# The paper's three bands; others can be added here once their numbers are checked.
LSST: dict[str, Band] = {
    "g": Band("g", 22.26, 2400.0, 28.26, 0.86, 482.0),
    "r": Band("r", 21.20, 5520.0, 28.10, 0.81, 622.0),
    "i": Band("i", 20.48, 5520.0, 27.78, 0.79, 755.0),
}


def bands(names) -> list[Band]:
    return [LSST[n] for n in names]


def survey_attrs(names, pixel_scale: float, y1_fraction: float) -> dict:
    """The observing parameters, flattened for HDF5 attributes."""
    attrs = {"pixel_scale_arcsec": pixel_scale, "mirror_diameter_m": MIRROR_DIAMETER, "obscuration": OBSCURATION,
             "airmass": AIRMASS, "gain_e_per_adu": GAIN, "y1_fraction": y1_fraction}
    for b in bands(names):
        attrs.update({f"{b.name}_sky_mag_arcsec2": b.sky_mag, f"{b.name}_zeropoint_mag": b.zeropoint,
                      f"{b.name}_psf_fwhm_arcsec": b.psf_fwhm, f"{b.name}_wavelength_nm": b.wavelength,
                      f"{b.name}_exposure_y10_s": b.exposure(1.0), f"{b.name}_exposure_y1_s": b.exposure(y1_fraction),
                      f"{b.name}_sky_e_per_s_per_pixel": b.sky_rate(pixel_scale)})
    return attrs
