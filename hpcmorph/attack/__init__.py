"""Stage 3, ``attack``: Su et al.'s one-pixel (k-pixel) attack by differential evolution, batched.

Entry point: :func:`run(config, ctx) <hpcmorph.attack.stage.run>`; output layout:
:func:`~hpcmorph.attack.stage.columns`.
"""

from .stage import columns, output_path, run

__all__ = ["columns", "output_path", "run"]
