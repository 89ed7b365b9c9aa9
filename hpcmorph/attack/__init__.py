"""Stage 3, ``attack``: Su et al.'s one-pixel (k-pixel) attack by differential evolution, batched.

Entry point: :func:`run(config, ctx, force) <hpcmorph.attack.stage.run>`; output layout:
:func:`~hpcmorph.attack.stage.columns`.
"""

from .stage import columns, config_for_k, configs, output_path, run

__all__ = ["columns", "config_for_k", "configs", "output_path", "run"]
