"""Stage 2, ``train``: ResNet18 (or a small CNN) with a 256-d latent bottleneck, plainly, with domain
adaptation (MMD, CORAL, DANN, Sinkhorn) and adversarially (:mod:`.variants`).

Entry point: :func:`run(config, ctx, force) <hpcmorph.train.stage.run>`; trained models are read back
with :func:`hpcmorph.train.saved.load_model`.
"""

# The stage (torch) loads on first use: the plan reads the variants' registry without it.
__all__ = ["PREEMPTED_EXIT", "Preempted", "model_dir", "run"]


def __getattr__(name: str):
    if name in __all__:
        from . import stage

        return getattr(stage, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
