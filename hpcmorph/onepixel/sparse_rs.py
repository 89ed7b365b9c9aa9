"""Sparse-RS: random search for k-pixel attacks (Croce et al., "Sparse-RS", AAAI 2022), batched.

An attack keeps a current candidate: k distinct pixels, each at a corner of the value box (see
:mod:`.corners`). It starts from k positions drawn without replacement and random corners; each
step then moves a scheduled number of its pixels, each to a position drawn uniformly from the
pixels not currently changed, at a random corner, and keeps the proposal if its margin loss
(:mod:`.goal`) is not worse than the current one's (equal is kept: it lets the search cross flat
stretches). It stops at the first candidate that reaches the goal, or when its query budget is spent.
With one proposal per step (the paper's, ``proposals`` = 1) the query count of a success is the index
of the successful candidate, counted from 1 (the start candidate).

Proposals per step. A forward pass of a few images costs nearly as much as one of a hundred (the
weights are read once per pass), so an attack may put ``proposals`` = R candidates to the model per
step, all drawn from its current candidate: the first successful one (in draw order) ends the
attack, else the best one (lowest loss, the first among equals) is kept if not worse. Every
proposal is a query: a success counts its whole step. The last step of an attack holds only what
is left of its budget.

Pixels moved per step, the paper's schedule for its L0 attacks: ``max(1, int(alpha_i k))`` with
``alpha_i = alpha_init / d``, d = 1, 2, 4, 5, 6, 8, 10, 12, 15, 20 as the step ``i``, rescaled to a
10,000-query budget (``int(i / max_queries * 10000)``), passes 0, 50, 200, 500, 1000, 2000, 4000,
6000 and 8000. Large moves early, single-pixel moves late; with k = 1 every step moves the pixel.

Batching as in :mod:`hpcmorph.attack.evolution`: each attack draws from its own generator (its seed), in the same
order whatever shares its batch, so batched runs equal one-at-a-time runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
import torch

from . import goal
from .corners import Box
from .outcome import Objective, Result

SCHEDULE_STEPS = (0, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
SCHEDULE_DIVISORS = (1, 2, 4, 5, 6, 8, 10, 12, 15, 20)


@dataclass(frozen=True)
class Settings:
    """max_queries: model queries per attack at most (>= 1). alpha_init: the schedule's starting
    fraction of the k pixels moved per step, in (0, 1]. threshold: see :mod:`.goal`. proposals:
    candidates per attack per step (R, see the module docstring)."""

    max_queries: int = 2000
    alpha_init: float = 0.8
    threshold: float = 0.5
    proposals: int = 1

    def __post_init__(self):
        if self.proposals < 1:
            raise ValueError(f"proposals must be >= 1, got {self.proposals}")
        if self.max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {self.max_queries}")
        if not 0.0 < self.alpha_init <= 1.0:
            raise ValueError(f"alpha_init must be in (0, 1], got {self.alpha_init}")


def moved(step: int, pixels: int, settings: Settings) -> int:
    """Pixels resampled at ``step`` (1, 2, ...: queries used before it) of a k-pixel attack."""
    it = int(step / settings.max_queries * 10000)
    divisor = SCHEDULE_DIVISORS[sum(b < it for b in SCHEDULE_STEPS)]
    return max(1, int(settings.alpha_init / divisor * pixels))


@dataclass
class State:
    """The current candidates of n attacks: position, corner (n, k) int64; loss (n,); probs (n, K);
    queries and steps (n,) int64, used so far."""

    position: np.ndarray
    corner: np.ndarray
    loss: np.ndarray
    probs: np.ndarray
    queries: np.ndarray
    steps: np.ndarray


def _outside(rng: np.random.Generator, taken: np.ndarray, count: int, positions: int) -> np.ndarray:
    """``count`` distinct positions drawn uniformly from those not in ``taken``: draw from a shorter
    range without replacement and step over the taken positions in ascending order."""
    r = rng.choice(positions - len(taken), count, replace=False)
    for s in np.sort(taken):
        r = r + (r >= s)
    return r


def start(rng: np.random.Generator, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """A random start: k distinct positions and their corners, (k,) each."""
    return (rng.choice(box.positions, box.pixels, replace=False).astype(np.int64),
            rng.integers(0, box.n_corners, box.pixels).astype(np.int64))


def propose(rng: np.random.Generator, position: np.ndarray, corner: np.ndarray, box: Box, step: int,
            settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """A proposal from the current pixels: the scheduled number of them moved (see the module docstring)."""
    m = moved(step, box.pixels, settings)
    out = rng.choice(box.pixels, m, replace=False)
    new_position, new_corner = position.copy(), corner.copy()
    new_position[out] = _outside(rng, position, m, box.positions)
    new_corner[out] = rng.integers(0, box.n_corners, m)
    return new_position, new_corner


def walk(evaluate: Objective, box: Box, true: torch.Tensor, target: torch.Tensor, rngs: list, state: State,
         results: list, settings: Settings) -> list[Result]:
    """Random-search steps for the attacks whose ``results`` entry is None, from ``state``, until each
    succeeds or has used ``settings.max_queries``; fills ``results`` in place and returns it."""
    n = len(results)
    while True:
        live = [i for i in range(n) if results[i] is None and state.queries[i] < settings.max_queries]
        if not live:
            break
        counts = [min(settings.proposals, settings.max_queries - int(state.queries[i])) for i in live]
        drawn = [propose(rngs[i], state.position[i], state.corner[i], box, int(state.queries[i]), settings)
                 for i, r in zip(live, counts) for _ in range(r)]
        position = np.stack([d[0] for d in drawn])
        corner = np.stack([d[1] for d in drawn])
        loss, ok, probs, genome = evaluate_flat(evaluate, box, live, counts, position, corner, true, target,
                                                settings.threshold)
        start = 0
        for i, r in zip(live, counts):
            sl = slice(start, start + r)
            start += r
            state.queries[i] += r
            state.steps[i] += 1
            hits = np.flatnonzero(ok[sl])
            if len(hits):
                j = sl.start + int(hits[0])
                results[i] = Result(True, int(state.steps[i]), int(state.queries[i]), genome[j].copy(), probs[j].copy())
                continue
            j = sl.start + int(np.argmin(loss[sl]))  # the first of equal minima
            if loss[j] <= state.loss[i]:
                state.position[i], state.corner[i] = position[j], corner[j]
                state.loss[i], state.probs[i] = loss[j], probs[j]
    for i in range(n):
        if results[i] is None:
            results[i] = Result(False, int(state.steps[i]), int(state.queries[i]),
                                box.genomes(state.position[i], state.corner[i]), state.probs[i].copy())
    return results


def evaluate_flat(evaluate: Objective, box: Box, tasks: list, counts: list, position: np.ndarray, corner: np.ndarray,
                  true: torch.Tensor, target: torch.Tensor, threshold: float):
    """Classify ``counts[j]`` candidates of each task ``tasks[j]``, given in that order as (position,
    corner) (M, k), in one objective call; returns numpy (loss (M,), success (M,), probs (M, K),
    genome (M, D))."""
    rows = torch.as_tensor(np.repeat(tasks, counts))
    genome = torch.from_numpy(box.genomes(position, corner))
    loss, ok, probs = goal.score(evaluate(rows, genome[:, None]), true[rows], target[rows], threshold)
    return loss[:, 0].numpy(), ok[:, 0].numpy(), probs[:, 0].numpy(), genome.numpy()


def search(evaluate: Objective, box: Box, true: Sequence[int], target: Sequence[int], seeds: Sequence,
           settings: Settings) -> list[Result]:
    """Run one Sparse-RS attack per task, all tasks batched; returns one :class:`Result` per task.

    evaluate: the objective, answering logits (``PixelObjective(..., logits=True)``).
    true, target: (n,) each task's true and target class (-1: untargeted). seeds: (n,) each task's
    seed (anything ``numpy.random.default_rng`` takes): its random numbers come from it alone.
    """
    n = len(seeds)
    if not (len(true) == len(target) == n):
        raise ValueError(f"sparse-rs: {n} seeds but {len(true)} true classes and {len(target)} targets")
    true_t = torch.as_tensor(np.asarray(true), dtype=torch.long)
    target_t = torch.as_tensor(np.asarray(target), dtype=torch.long)
    rngs = [np.random.default_rng(s) for s in seeds]
    drawn = [start(r, box) for r in rngs]
    position, corner = np.stack([d[0] for d in drawn]), np.stack([d[1] for d in drawn])
    genome = torch.from_numpy(box.genomes(position, corner))[:, None]
    loss, ok, probs = goal.score(evaluate(torch.arange(n), genome), true_t, target_t, settings.threshold)
    results: list[Result | None] = [
        Result(True, 0, 1, genome[i, 0].numpy().copy(), probs[i, 0].numpy().copy()) if bool(ok[i, 0]) else None
        for i in range(n)]
    state = State(position, corner, loss[:, 0].numpy().copy(), probs[:, 0].numpy().copy(),
                  np.ones(n, np.int64), np.zeros(n, np.int64))
    return walk(evaluate, box, true_t, target_t, rngs, state, results, settings)
