"""The exhaustive corner search: ground truth for what one pixel can do.

For k = 1 it classifies every single-pixel corner candidate of an image, H x W x 2^C of them (see
:mod:`hpcmorph.onepixel.corners` for the corners and the scan order), and so tells for each attack whether one pixel
set to a corner value reaches the goal, and where. It is the reference the query-efficient methods
are scored against, and at 64 x 64 x 8 = 32,768 candidates per image it is cheaper than the
paper's 32,400-query DE budget per attack.

An attack ("task") is an (image, target) pair. Tasks of one image (its targets) share the image's
candidates: each candidate is classified once and scored for every target of the image (its
``group``). A task's ``queries`` is its scan position at its first success (the candidates it
needed, counted from 1, in scan order), or all H x W x 2^C when none succeeds: what the search
costs that attack alone, whatever else shares its forward passes. The model itself classifies
``chunk`` candidates of each live image per call; with early exit an image leaves the search after
the chunk where its last target succeeded.

Outcome per task: the first successful candidate in scan order (with or without early exit, so
both give the same rows but for ``flips``), or on failure the candidate with the lowest margin loss
(the first in scan order among equals); ``flips``, the number of successful candidates, when the
task's scan ran to the end (no early exit, or no success), else -1. No random numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
import torch

from ..onepixel import goal
from ..onepixel.corners import Box, scan
from ..onepixel.outcome import Objective, Result


@dataclass(frozen=True)
class Settings:
    """threshold: see :mod:`hpcmorph.onepixel.goal`. early_exit: stop an attack at its first success (else count every
    successful candidate). chunk: candidates of each image per objective call (changes no result)."""

    threshold: float = 0.5
    early_exit: bool = True
    chunk: int = 1024

    def __post_init__(self):
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")


def candidates(box: Box) -> int:
    """Single-pixel corner candidates of one image: H x W x 2^C."""
    return box.positions * box.n_corners


def search(evaluate: Objective, box: Box, true: Sequence[int], target: Sequence[int], groups: Sequence[int],
           settings: Settings) -> list[Result]:
    """Scan every single-pixel corner candidate for each task; returns one :class:`Result` per task.

    evaluate: the objective, answering logits (``PixelObjective(..., logits=True)``); it is called with
        the row of each image's first task (a group's tasks must have the same base image).
    true, target: (n,) each task's true and target class (-1: untargeted).
    groups: (n,) tasks with equal values attack the same image.
    """
    if box.pixels != 1:
        raise ValueError(f"the exhaustive search is for one pixel (k = 1), got k = {box.pixels}")
    n = len(true)
    if not (len(target) == len(groups) == n):
        raise ValueError(f"exhaustive: {n} true classes but {len(target)} targets and {len(groups)} groups")
    groups = np.asarray(groups)
    names, group_of = np.unique(groups, return_inverse=True)
    first_row = np.array([int(np.flatnonzero(group_of == g)[0]) for g in range(len(names))])
    true_t = torch.as_tensor(np.asarray(true), dtype=torch.long)
    target_t = torch.as_tensor(np.asarray(target), dtype=torch.long)
    total = candidates(box)

    found = np.full(n, -1, np.int64)          # scan index of the first success
    flips = np.zeros(n, np.int64)
    best_loss = np.full(n, np.inf)
    best_q = np.zeros(n, np.int64)
    kept_probs: list[np.ndarray | None] = [None] * n   # probs of the first success, or of the best
    counting = np.ones(n, bool)               # task still scored
    for start in range(0, total, settings.chunk):
        live_groups = np.unique(group_of[counting])
        if len(live_groups) == 0:
            break
        q = np.arange(start, min(total, start + settings.chunk))
        genome = torch.from_numpy(box.genomes(*[a[:, None] for a in scan(q, box.n_corners)]))  # (P, D)
        logits = evaluate(torch.as_tensor(first_row[live_groups]), genome[None].expand(len(live_groups), -1, -1))
        row_of_group = {int(g): r for r, g in enumerate(live_groups)}
        tasks = np.flatnonzero(counting)
        rows = torch.as_tensor([row_of_group[int(group_of[i])] for i in tasks])
        loss, ok, probs = goal.score(logits[rows], true_t[tasks], target_t[tasks], settings.threshold)
        for j, i in enumerate(tasks.tolist()):
            hits = torch.nonzero(ok[j]).flatten()
            flips[i] += len(hits)
            if len(hits) and found[i] < 0:
                found[i] = start + int(hits[0])
                kept_probs[i] = probs[j, int(hits[0])].numpy().copy()
                counting[i] = not settings.early_exit
            if found[i] < 0:
                k = int(loss[j].argmin())  # the first of equal minima
                if float(loss[j, k]) < best_loss[i]:
                    best_loss[i], best_q[i] = float(loss[j, k]), start + k
                    kept_probs[i] = probs[j, k].numpy().copy()

    results = []
    for i in range(n):
        success = found[i] >= 0
        q = found[i] if success else best_q[i]
        genome = box.genomes(*[np.array([a]) for a in scan(q, box.n_corners)])
        counted = not (success and settings.early_exit)
        results.append(Result(bool(success), 0, int(found[i] + 1 if success else total), genome,
                              kept_probs[i], int(flips[i]) if counted else -1))
    return results
