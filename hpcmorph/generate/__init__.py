"""Stage 1, ``generate``: LSST-like Y10/Y1 mock observations of galaxies, labelled from Gini-M20.

Entry point: :func:`run(config, ctx, force) <hpcmorph.generate.stage.run>`; output layout:
:func:`~hpcmorph.generate.stage.columns`.
"""

from .stage import OUTPUT_NAME, columns, output_path, run

__all__ = ["OUTPUT_NAME", "columns", "output_path", "run"]
