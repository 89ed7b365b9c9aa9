"""Stage 5, ``report``: every stage's numbers and figures in one self-contained HTML page and tables.

Entry point: :func:`run(config, ctx, force) <hpcmorph.report.stage.run>`.
"""

from .stage import output_dir, run

__all__ = ["output_dir", "run"]
