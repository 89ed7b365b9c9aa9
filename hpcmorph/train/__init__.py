"""Stage 2, ``train``: ResNet18 (or a small CNN) with a 256-d latent bottleneck, plainly and with domain
adaptation (MMD, CORAL, DANN, Sinkhorn: :mod:`.variants`).

Entry point: :func:`run(config, ctx, force) <hpcmorph.train.stage.run>`; trained models are read back
with :func:`hpcmorph.train.saved.load_model`.
"""

from .stage import PREEMPTED_EXIT, Preempted, model_dir, run

__all__ = ["PREEMPTED_EXIT", "Preempted", "model_dir", "run"]
