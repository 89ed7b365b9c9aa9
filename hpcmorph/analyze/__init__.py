"""Stage 4, ``analyze``: latent embeddings, Table 2 distances, church windows, isomaps, exposure and k curves.

Entry point: :func:`run(config, ctx, force) <hpcmorph.analyze.stage.run>`.
"""

from .stage import output_dir, run

__all__ = ["output_dir", "run"]
