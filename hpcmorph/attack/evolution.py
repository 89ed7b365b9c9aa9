"""Differential evolution for many attacks at once: every population of every attack in one batch.

Su et al.'s one-pixel attack searches a box-bounded genome (here: a pixel's column, row and one
value per band, repeated for k pixels) with DE/rand/1: each member ``i`` of a population of P
breeds a mutant ``x_r1 + F (x_r2 - x_r3)`` from three other distinct members, and the trial
(mutant, optionally crossed with the parent) replaces the parent only if it scores strictly
better (greedy selection). The population starts uniform in the box.

Batching without coupling. An attack ("task") owns its population, fitness and random generator
(``numpy.random.Generator`` from its own seed); the batch only stacks the tasks' tensors so that
the objective sees every live candidate of every task in one call. The random draws of a task are
made from its own generator, in the same order whatever else is in the batch, and the objective is
evaluated per candidate, so a task's result does not depend on which tasks share its batch (tested
against one-at-a-time runs). A task leaves the batch the generation it succeeds: its candidates
are no longer evaluated.

No Python loop runs over candidates: per generation there is one loop over the live tasks (a few
small draws each) and one objective call for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
import torch

from ..onepixel import goal
from ..onepixel.outcome import Objective, Result


@dataclass(frozen=True)
class Settings:
    """DE settings.

    population: P, candidates per attack (>= 4: DE/rand/1 needs three others).
    generations: G, generations after the initial population; an attack costs at most
        P x (G + 1) model queries.
    mutation: F, the differential weight.
    crossover: binomial crossover probability CR. 1.0 (the default) takes every gene from the mutant,
        i.e. no crossover, as Su et al. (DE/rand/1 without crossover).
    threshold: a targeted attack succeeds when the target's probability exceeds it (the authors: 0.5).
        An untargeted attack succeeds when the predicted class is not the true one.
    fitness: "probability" (the authors: the target's probability, or the true class's when
        untargeted; it saturates near 0 far from success) or "margin" (:func:`hpcmorph.onepixel.goal.margin_loss`;
        the objective then answers logits).
    """

    population: int = 400
    generations: int = 80
    mutation: float = 0.5
    crossover: float = 1.0
    threshold: float = 0.5
    fitness: str = "probability"

    def __post_init__(self):
        if self.population < 4:
            raise ValueError(f"DE needs a population of at least 4, got {self.population}")
        if self.generations < 0:
            raise ValueError(f"generations must be >= 0, got {self.generations}")
        if self.fitness not in ("probability", "margin"):
            raise ValueError(f"fitness must be 'probability' or 'margin', got {self.fitness!r}")


def three_distinct(rng: np.random.Generator, population: int) -> np.ndarray:
    """(P, 3) indices ``r1, r2, r3``: for each member ``i``, three distinct members other than ``i``.

    Each is drawn uniformly from the indices still allowed, by drawing from a shorter range and
    stepping over the excluded indices in ascending order (no rejection loop, no per-row Python).
    """
    p = population
    i = np.arange(p)
    a = rng.integers(0, p - 1, p)
    a += a >= i
    b = rng.integers(0, p - 2, p)
    for s in np.sort(np.stack([i, a], 1), axis=1).T:
        b += b >= s
    c = rng.integers(0, p - 3, p)
    for s in np.sort(np.stack([i, a, b], 1), axis=1).T:
        c += c >= s
    return np.stack([a, b, c], 1)


def _probs(out: torch.Tensor) -> torch.Tensor:
    """The objective's answer as an ordinary float64 CPU tensor (it may come from inference mode)."""
    return out.detach().to("cpu", torch.float64).clone()


def _score(probs: torch.Tensor, true: torch.Tensor, target: torch.Tensor, threshold: float):
    """Fitness (lower is better) and success of candidates: probs (m, P, K); true, target (m,)."""
    targeted = (target >= 0)[:, None]
    t = target.clamp(min=0)[:, None, None].expand(-1, probs.shape[1], 1)
    p_target = probs.gather(2, t).squeeze(2)
    p_true = probs.gather(2, true[:, None, None].expand(-1, probs.shape[1], 1)).squeeze(2)
    fitness = torch.where(targeted, 1.0 - p_target, p_true)
    success = torch.where(targeted, p_target > threshold, probs.argmax(2) != true[:, None])
    return fitness, success


def _outcome(out: torch.Tensor, true: torch.Tensor, target: torch.Tensor, settings: Settings):
    """(fitness, success, probs) of the objective's answer ``out`` (m, P, K): probabilities, or logits
    for the margin fitness."""
    if settings.fitness == "margin":
        return goal.score(out, true, target, settings.threshold)
    fitness, success = _score(out, true, target, settings.threshold)
    return fitness, success, out


def evolve(evaluate: Objective, lower: np.ndarray, upper: np.ndarray, true: Sequence[int], target: Sequence[int],
           seeds: Sequence, settings: Settings, resample: np.ndarray | None = None) -> list[Result]:
    """Run one DE attack per task, all tasks batched; returns one :class:`Result` per task.

    evaluate: the objective (see :data:`Objective`); called once per generation with every live task.
    lower, upper: (D,) the genome's box. Out-of-box genes of a trial are drawn again uniformly in the
        box where ``resample`` (D,) is true (scipy's rule; used for positions, so that candidates do
        not pile up on the image border), else clipped to the box (used for pixel values, whose
        best settings are often at a bound).
    true: (n,) each task's true class; target: (n,) its target class, or -1 (untargeted).
    seeds: (n,) each task's seed (anything ``numpy.random.default_rng`` takes, e.g. a
        ``SeedSequence``): the task's random numbers come from it alone.
    """
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    d = lower.shape[0]
    resample = np.zeros(d, bool) if resample is None else np.asarray(resample, bool)
    n, p, f, cr = len(seeds), settings.population, settings.mutation, settings.crossover
    if not (len(true) == len(target) == n):
        raise ValueError(f"evolve: {n} seeds but {len(true)} true classes and {len(target)} targets")
    true_t = torch.as_tensor(np.asarray(true), dtype=torch.long)
    target_t = torch.as_tensor(np.asarray(target), dtype=torch.long)
    rngs = [np.random.default_rng(s) for s in seeds]
    lo_t, hi_t, res_t = torch.from_numpy(lower), torch.from_numpy(upper), torch.from_numpy(resample)

    pop = torch.from_numpy(np.stack([r.uniform(lower, upper, (p, d)) for r in rngs]))  # (n, P, D)
    fitness, success, probs = _outcome(_probs(evaluate(torch.arange(n), pop)), true_t, target_t, settings)
    results: list[Result | None] = [None] * n
    queries = np.full(n, p, dtype=np.int64)

    def finish(tasks: torch.Tensor, cand: torch.Tensor, fit: torch.Tensor, ok: torch.Tensor, pr: torch.Tensor,
               generation: int) -> None:
        """Close the tasks (rows of ``cand``) with a success: keep the best successful candidate."""
        won = ok.any(1)
        masked = torch.where(ok, fit, torch.full_like(fit, float("inf")))
        best = masked.argmin(1)
        for row in torch.nonzero(won).flatten().tolist():
            k = int(best[row])
            results[int(tasks[row])] = Result(True, generation, int(queries[int(tasks[row])]),
                                              cand[row, k].numpy().copy(), pr[row, k].numpy().copy())

    finish(torch.arange(n), pop, fitness, success, probs, 0)
    for generation in range(1, settings.generations + 1):
        live = torch.tensor([i for i in range(n) if results[i] is None], dtype=torch.long)
        if len(live) == 0:
            break
        # The tasks' own draws, in a fixed order: a task's stream never depends on its neighbours.
        picks, cross, fresh = [], [], []
        for i in live.tolist():
            rng = rngs[i]
            picks.append(three_distinct(rng, p))
            mask = rng.random((p, d)) < cr
            mask[np.arange(p), rng.integers(0, d, p)] = True  # at least one gene from the mutant
            cross.append(mask)
            fresh.append(rng.uniform(lower, upper, (p, d)))
        idx = torch.from_numpy(np.stack(picks))  # (m, P, 3)
        parents = pop[live]

        def member(j: int) -> torch.Tensor:
            return parents.gather(1, idx[:, :, j:j + 1].expand(-1, -1, d))

        mutant = member(0) + f * (member(1) - member(2))
        trial = torch.where(torch.from_numpy(np.stack(cross)), mutant, parents)
        outside = (trial < lo_t) | (trial > hi_t)
        trial = torch.where(outside & res_t, torch.from_numpy(np.stack(fresh)), trial)
        trial = torch.maximum(torch.minimum(trial, hi_t), lo_t)

        t_fit, t_ok, t_probs = _outcome(_probs(evaluate(live, trial)), true_t[live], target_t[live], settings)
        queries[live.numpy()] += p
        finish(live, trial, t_fit, t_ok, t_probs, generation)
        # Greedy selection: the trial replaces its parent only if strictly better.
        better = t_fit < fitness[live]
        pop[live] = torch.where(better[:, :, None], trial, parents)
        fitness[live] = torch.where(better, t_fit, fitness[live])
        probs[live] = torch.where(better[:, :, None], t_probs, probs[live])

    for i in range(n):
        if results[i] is None:
            k = int(fitness[i].argmin())
            results[i] = Result(False, settings.generations, int(queries[i]), pop[i, k].numpy().copy(),
                                probs[i, k].numpy().copy())
    return results
