"""The attack methods behind ``attack.method``: one call for the stage, one result each
(:class:`hpcmorph.onepixel.outcome.Result`).

- ``de``: Su et al.'s differential evolution (:mod:`.evolution`), the paper's method of record;
  fitness the target's probability (the authors) or the margin loss (``attack.fitness``).
- ``exhaustive``: every single-pixel corner candidate (:mod:`.exhaustive`): ground truth for k = 1.
- ``sparse-rs``: random search over k corner pixels (:mod:`hpcmorph.onepixel.sparse_rs`).
- ``saliency``: the attacked model's gradient ranks the corner candidates, then a best-first search
  around the best of them or random search (:mod:`hpcmorph.onepixel.saliency`); its gradient counts as 3 queries.

Every method reads its own ``attack.*`` settings (:data:`SETTINGS`); the others do not change its
results and stay out of the stage's digest.
"""

from __future__ import annotations

import numpy as np
import torch

from . import certify as certification
from ..onepixel import pixels, saliency, sparse_rs
from ..onepixel.corners import Box
from . import evolution, exhaustive, mixed

METHODS = ("de", "exhaustive", "sparse-rs", "saliency")
#: The ``attack.*`` settings each method reads, beyond those every method reads (mode, pixels,
#: pixel_range, threshold, ...).
SETTINGS = {
    "de": ("population", "generations", "mutation", "crossover", "fitness"),
    "exhaustive": ("early_exit",),
    "sparse-rs": ("max_queries", "rs_alpha", "proposals"),
    "saliency": ("max_queries", "rs_alpha", "proposals", "saliency_top", "saliency_radius"),
}


def unused(method: str) -> tuple[str, ...]:
    """The method settings of the other methods that ``method`` does not read (and ``precision`` for the
    exhaustive search, which classifies in float32 whatever it says)."""
    own = set(SETTINGS[method])
    others = tuple(sorted({k for m in SETTINGS.values() for k in m} - own))
    return others + (("precision",) if method == "exhaustive" else ())


CERTIFY_SETTINGS = ("certify", "certify_precision", "certify_tolerance")


def certifies(a) -> bool:
    """Whether the attack ``a`` (``cfg.attack``) runs the certifying scan: attack.certify at k = 1, for
    every method but the exhaustive search (its own certificate)."""
    return bool(a.certify) and a.pixels == 1 and a.method != "exhaustive"


def certified(a) -> bool:
    """Whether the output of the attack ``a`` decides its ``certified`` column: the scan runs, or the
    method is the exhaustive search (k = 1 is all it does)."""
    return certifies(a) or a.method == "exhaustive"


def certify_unused(a) -> tuple[str, ...]:
    """The certification settings that change nothing in the attack ``a``'s output (all of them
    without a scan; the precision and tolerance also with one: the scan's answer is exact)."""
    return CERTIFY_SETTINGS if not certifies(a) else CERTIFY_SETTINGS[1:]


def budget(a, box: Box) -> int:
    """Most model queries one attack may use under the settings ``a`` (``cfg.attack``)."""
    if a.method == "de":
        return a.population * (a.generations + 1)
    if a.method == "exhaustive":
        return exhaustive.candidates(box)
    return a.max_queries


def gradient_queries(method: str) -> int:
    """Queries a method's gradient counts as, per attack (saliency: one forward + one backward pass)."""
    return saliency.GRADIENT_QUERIES if method == "saliency" else 0


def attack(a, logits_fn, images: torch.Tensor, groups, true, target, seeds, box: Box, reduced_fn=None):
    """Run ``a.method`` (``a`` = ``cfg.attack``) on the tasks; returns (results, objective).

    logits_fn: the attacked model, images -> logits (float32); images: (n, C, H, W) each task's
    normalised image, on the model's device; groups: (n,) tasks with equal values share the image;
    true, target, seeds: (n,) per task; box: the candidates' :class:`hpcmorph.onepixel.corners.Box`. reduced_fn: the
    model in reduced precision (:func:`.mixed.reduced`), or None: the candidates are classified with
    it and those near a goal again with ``logits_fn``, which alone decides (:mod:`.mixed`); each
    attack's queries include its float32 re-classifications.
    """
    logits = a.method != "de" or a.fitness == "margin"
    if reduced_fn is None:
        objective = pixels.PixelObjective(logits_fn, images, box.pixels, a.forward_batch, logits=logits)
    else:
        objective = mixed.CheckedObjective(logits_fn, reduced_fn, images, box.pixels,
                                           mixed.goals_of(a.method, groups, true, target), a.threshold,
                                           a.forward_batch, logits=logits)
    if a.method == "de":
        lower, upper, is_position = pixels.bounds(box.pixels, box.bands, box.height, box.width, (box.lows, box.highs))
        settings = evolution.Settings(a.population, a.generations, a.mutation, a.crossover, a.threshold, a.fitness)
        results = evolution.evolve(objective, lower, upper, true, target, seeds, settings, resample=is_position)
    elif a.method == "exhaustive":
        results = exhaustive.search(objective, box, true, target, groups,
                                    exhaustive.Settings(a.threshold, a.early_exit, a.forward_batch))
    elif a.method == "sparse-rs":
        results = sparse_rs.search(objective, box, true, target, seeds,
                                   sparse_rs.Settings(a.max_queries, a.rs_alpha, a.threshold, a.proposals))
    elif a.method == "saliency":
        results = saliency.search(objective, box, true, target, seeds,
                                  saliency.Settings(a.max_queries, a.saliency_top, a.rs_alpha, a.threshold,
                                                    a.proposals, a.saliency_radius), groups)
    else:
        raise ValueError(f"unknown attack method {a.method!r} (methods: {', '.join(METHODS)})")
    return mixed.settle(results, objective, true, target, a.threshold), objective


def certify(a, model, images: torch.Tensor, groups, true, target, results, box: Box,
            device: torch.device, known=None) -> certification.Certificates:
    """The certifying scan of the attack ``a`` (:mod:`.certify`), or its columns undecided (-1) where
    it does not run; the exhaustive search's own outcome where it is the method.

    model: the attacked model (returns ``(latent, logits)``); images: (n, C, H, W) each task's
    normalised image on ``device``; groups, true, target: as :func:`attack`; results: its results;
    known: the certificates found before (see :func:`.certify.certify`).
    """
    n = len(results)
    success = np.array([r.success for r in results], bool)
    if a.method == "exhaustive" and a.pixels == 1:
        scanned = np.array([r.flips for r in results], np.int64)
        first = np.array([r.queries - 1 if r.success else -1 for r in results], np.int64)
        return certification.Certificates(success.astype(np.int8), scanned, first)
    if not certifies(a):
        none = np.full(n, -1, np.int64)
        return certification.Certificates(none.astype(np.int8), none, none.copy())
    objective = pixels.PixelObjective(lambda x: model(x)[1], images, 1, a.forward_batch, logits=True)
    precision = certification.resolve_precision(a.certify_precision, device)
    settings = certification.Settings(a.threshold, precision,
                                      certification.tolerance_for(precision, a.certify_tolerance), a.forward_batch)
    return certification.certify(model, objective, box, groups, true, target, success, settings, known)


def as_arrays(results) -> dict[str, np.ndarray]:
    """The scalar columns every method fills."""
    return {"success": np.array([r.success for r in results], bool),
            "generations": np.array([r.generations for r in results], np.int32),
            "queries": np.array([r.queries for r in results], np.int64),
            "flips": np.array([r.flips for r in results], np.int64)}
