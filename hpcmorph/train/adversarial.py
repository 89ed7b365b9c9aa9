"""Adversarial training batches: one-pixel corner attacks made on the fly against the weights being trained.

A training step of the ``adversarial`` variants hands its batch (e-/s per pixel) to
:func:`attack_batch`, which returns it normalised, part of it replaced by one-pixel attacked copies
that the saliency-ranked corner search (:mod:`hpcmorph.onepixel.saliency`) found against the
model's current weights; the step then trains on that batch with the true labels.

Which images. Each image is drawn for attack on its own, with probability ``fraction``, by a
uniform number from (seed, epoch, step, index) alone, ``index`` being the image's identity (its row
of ``galaxies.h5``): the draw is the same whichever rank holds the image and however many ranks
share the global batch, and the number drawn scatters around ``fraction`` x B from step to step (a
fixed count per batch would depend on how the batch is split). Of the drawn images, those the model
already misclassifies are left as they are: an untargeted attack on them has nothing to do.

The attack. Untargeted (the goal margin is the true class's logit minus the largest other, success
once another class leads; :mod:`hpcmorph.onepixel.goal`), one search per image. Why untargeted: the
attack stage counts an image as flipped when any other class can be reached, and an untargeted
search goes to the nearest of them, which is the weakness training should remove; a target drawn at
random would spend the budget on the harder class half the time, and attacking every target would
double the cost (three classes). The search is the laptop preset's: the gradient's ranking, its
first ``TOP`` candidates, then the best-first search around the best of them up to ``RADIUS``
pixels, ``PROPOSALS`` candidates per forward pass; ``queries`` per image with the gradient counted
as 3 (:data:`hpcmorph.onepixel.saliency.GRADIENT_QUERIES`).

Values. Corners of the attack stage's default value box (``attack.pixel_range`` null): every band at
the stretch of the lower or the upper clip limit (:func:`hpcmorph.onepixel.corners.data_range`,
about [0.46, 0.886]), i.e. a pixel set to the clip limits in e-/s. Not the authors' [0, 1]: no image
in e-/s stretches to 0 or 1, so those are values the model never meets in data.

Images the search cannot flip in its budget are replaced by its best candidate (the lowest goal
margin it classified), as adversarial training does with the inner maximum it finds (Madry et al.
2018): the share of attacked images stays ``fraction`` of the correctly classified ones as the
model hardens instead of falling with the flip rate, and a candidate that narrows the margin
without crossing it still pushes the boundary away from the image.

Model state. The search runs with every module in eval mode (BatchNorm's running statistics, no
dropout; this rank's statistics), and each module's mode is restored after. Its gradient is taken
with respect to the input image alone (``torch.autograd.grad``): no parameter's ``.grad`` is
written, the returned images carry no graph, and the wrapped module is called directly, so a DDP
wrapper starts no collective (ranks attack different numbers of images). The search draws no random
numbers from torch, so the step's dropout draws are a plain step's. It runs in float32, outside
the step's autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..onepixel import goal, saliency
from ..onepixel.corners import Box, default_range
from ..onepixel.pixels import PixelObjective, apply, decode, forward_logits

DRAW_STREAM, SEARCH_STREAM = 0, 1
#: The saliency search's shape (the laptop preset's attack: attack.saliency_top, saliency_radius, proposals).
TOP, RADIUS, PROPOSALS = 32, 3, 32
#: Candidate images per forward pass at most (bounds memory; does not change a result).
FORWARD_BATCH = 512


@dataclass
class AttackedBatch:
    """The batch a training step trains on, and what the search did to it.

    images: (B, C, H, W) float32, normalised (the model's input), on the model's device, no graph.
    drawn: (B,) bool, the images drawn for attack (:func:`drawn`). attacked: (B,) bool, drawn and
    classified correctly: replaced by the search's candidate. flipped: (B,) bool, attacked and
    that candidate changes the predicted class. queries: (B,) int64 queries spent per image (0
    where not attacked).
    """

    images: torch.Tensor
    drawn: np.ndarray
    attacked: np.ndarray
    flipped: np.ndarray
    queries: np.ndarray

    @property
    def flips(self) -> int:
        return int(self.flipped.sum())


def drawn(seed: int, epoch: int, step: int, index, fraction: float) -> np.ndarray:
    """(B,) bool: the images with identities ``index`` (B,) drawn for attack at (epoch, step) of the
    run with training seed ``seed``; each with probability ``fraction``, from those numbers alone."""
    u = [np.random.default_rng([seed, DRAW_STREAM, epoch, step, int(i)]).random() for i in np.asarray(index)]
    return np.asarray(u, np.float64).reshape(-1) < fraction


def search_seed(seed: int, epoch: int, step: int, index: int) -> np.random.SeedSequence:
    """The seed of one image's search (its refinement's draws)."""
    return np.random.SeedSequence([seed, SEARCH_STREAM, epoch, step, int(index)])


def attack_batch(model: torch.nn.Module, images, labels, stretch, index, *, seed: int, epoch: int, step: int,
                 fraction: float, queries: int) -> AttackedBatch:
    """The training batch with a drawn share of its images replaced by one-pixel attacked copies.

    model: the model being trained (returns ``(latent, logits)``; a DDP wrapper is looked through);
    images: (B, C, H, W) e-/s per pixel, numpy or tensor; labels: (B,) true classes; stretch: the
    run's :class:`~hpcmorph.train.normalize.AsinhStretch`; index: (B,) the images' rows in
    galaxies.h5; seed, epoch, step: the run's training seed and the step's position; fraction: in
    [0, 1] (``train.adversarial_fraction``); queries: the search's budget per image, > 3
    (``train.adversarial_queries``). See the module docstring for what is attacked and how.
    """
    module = getattr(model, "module", model)
    device = next(module.parameters()).device
    raw = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    x = stretch(raw).float().to(device)  # as a plain step normalises its batch
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, np.int64).reshape(-1)
    index = np.asarray(index, np.int64).reshape(-1)
    if not (len(x) == len(labels) == len(index)):
        raise ValueError(f"attack_batch: {len(x)} images, {len(labels)} labels and {len(index)} indices")
    b, c, h, w = x.shape
    chosen = drawn(seed, epoch, step, index, fraction)
    attacked, flipped, spent = np.zeros(b, bool), np.zeros(b, bool), np.zeros(b, np.int64)
    if not chosen.any():
        return AttackedBatch(x, chosen, attacked, flipped, spent)

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        def logits_fn(t: torch.Tensor) -> torch.Tensor:
            return module(t)[1]

        rows = np.flatnonzero(chosen)
        with torch.inference_mode():
            clean = forward_logits(logits_fn, x[torch.as_tensor(rows, device=device)]).argmax(1).cpu().numpy()
        rows = rows[clean == labels[rows]]
        if len(rows):
            base = x[torch.as_tensor(rows, device=device)].clone()
            box = Box.of(1, c, h, w, default_range(stretch))
            objective = PixelObjective(logits_fn, base, 1, FORWARD_BATCH, logits=True)
            settings = saliency.Settings(max_queries=queries, top=TOP, proposals=PROPOSALS, radius=RADIUS)
            results = saliency.search(objective, box, labels[rows].tolist(), [goal.UNTARGETED] * len(rows),
                                      [search_seed(seed, epoch, step, index[r]) for r in rows], settings)
            genomes = torch.from_numpy(np.stack([np.ravel(r.genome) for r in results]))
            px, py, values = decode(genomes, 1, h, w)
            with torch.no_grad():
                x = x.clone()
                x[torch.as_tensor(rows, device=device)] = apply(base, px.to(device), py.to(device), values.to(device))
            attacked[rows] = True
            flipped[rows] = [r.success for r in results]
            spent[rows] = [r.queries for r in results]
    finally:
        for m, mode in modes:
            m.training = mode
    return AttackedBatch(x.detach(), chosen, attacked, flipped, spent)
