"""The ways of training a classifier (``train.variants``): what each adds to the cross-entropy.

Every variant trains the same network on the same labelled Y10 batches with the same class-weighted
cross-entropy; a domain-adapted variant also reads a batch of the unlabelled Y1 pool at every step
and adds ``weight x term(z_Y10, z_Y1)`` on the two batches' 256-d latents:

==========  =====================================================  ===================  ===============
variant     term                                                   weight               module
==========  =====================================================  ===================  ===============
regular     none                                                   -                    -
mmd         squared MMD, five Gaussian kernels                     train.mmd_lambda     :mod:`.mmd`
coral       |C_Y10 - C_Y1|_F^2 / (4 d^2) of the latent covariances  train.coral_lambda   :mod:`.coral`
dann        a domain classifier's cross-entropy through gradient    train.dann_lambda    :mod:`.dann`
            reversal (the classifier is trained beside the model)
sinkhorn    debiased Sinkhorn divergence (entropic OT)              train.sinkhorn_lambda :mod:`.sinkhorn`
==========  =====================================================  ===================  ===============

and two whose batches are hardened rather than their loss extended: ``adversarial`` (the regular loss
on batches where a drawn share of the images is replaced by one-pixel attacked copies made against
the current weights, :mod:`.adversarial`) and ``adversarial+mmd`` (the same batches, and the MMD term).

A :class:`Variant` says what the training loop needs to know and nothing else, so the loop asks
``variant.uses_y1`` rather than comparing names. ``adversarial`` marks a variant whose training
batches include one-pixel attacked images made on the fly. This module
imports nothing heavy: the configuration's choices are checked against it by a test.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One way of training. ``term``: the domain term's name (``mmd``, ``coral``, ``dann``,
    ``sinkhorn``) or None; ``weight``: the ``train`` setting it is multiplied by; ``weight_decay``: the
    ``train`` setting of Adam's weight decay; ``critic``: a domain classifier is trained beside the
    model (its weights are checkpointed, not saved in model.pt); ``min_batch``: the fewest latents per
    domain and rank the term is defined on (a smaller last batch of an epoch adds no term);
    ``adversarial``: training batches include attacked images."""

    name: str
    title: str
    term: str | None = None
    weight: str | None = None
    weight_decay: str = "weight_decay_mmd"
    critic: bool = False
    min_batch: int = 1
    adversarial: bool = False

    @property
    def uses_y1(self) -> bool:
        """Whether training reads the unlabelled Y1 pool (every domain-adapted variant)."""
        return self.term is not None


REGISTRY: dict[str, Variant] = {v.name: v for v in (
    Variant("regular", "Regular training", weight_decay="weight_decay"),
    Variant("mmd", "Domain adaptation (MMD)", term="mmd", weight="mmd_lambda"),
    Variant("coral", "Domain adaptation (CORAL)", term="coral", weight="coral_lambda", min_batch=2),
    Variant("dann", "Domain adaptation (DANN)", term="dann", weight="dann_lambda", critic=True),
    Variant("sinkhorn", "Domain adaptation (Sinkhorn)", term="sinkhorn", weight="sinkhorn_lambda"),
    Variant("adversarial", "Adversarial training", weight_decay="weight_decay", adversarial=True),
    Variant("adversarial+mmd", "Adversarial training with MMD", term="mmd", weight="mmd_lambda", adversarial=True),
)}


def of(name: str) -> Variant:
    """The variant called ``name`` (a ValueError naming the known ones otherwise)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown training variant {name!r}; known: {', '.join(REGISTRY)}") from None


def title(name: str) -> str:
    """Table 1's row name of a variant (the name itself for one this module does not know)."""
    return REGISTRY[name].title if name in REGISTRY else name
