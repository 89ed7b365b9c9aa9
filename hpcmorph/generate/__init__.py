"""Stage 1, ``generate``: LSST-like Y10/Y1 mock observations of galaxies, labelled from Gini-M20.

Entry point: :func:`run(config, ctx, force) <hpcmorph.generate.stage.run>`; output layout:
:func:`~hpcmorph.generate.stage.columns`.
"""

# The stage (GalSim, SciPy, astropy) loads on first use: the later stages import this package's
# light modules (classes, dataset, survey) without paying for drawing galaxies.
__all__ = ["OUTPUT_NAME", "columns", "output_path", "run"]


def __getattr__(name: str):
    if name in __all__:
        from . import stage

        return getattr(stage, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
