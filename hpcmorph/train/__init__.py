"""Stage 2, ``train``: ResNet18 with a 256-d latent bottleneck, plainly and with MMD domain adaptation.

Entry point: :func:`run(config) <hpcmorph.train.stage.run>`.
"""

from .stage import PREEMPTED_EXIT, Preempted, run, run_dir

__all__ = ["PREEMPTED_EXIT", "Preempted", "run", "run_dir"]
