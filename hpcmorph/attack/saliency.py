"""Saliency-ranked corner search: a white-box prior from the attacked model's gradient, then random search.

1. Gradient. For each attack, one forward and one backward pass through the attacked model give the
   gradient ``g`` (C, H, W) of the goal margin (the negative margin loss of :mod:`.goal`: for a
   targeted attack the target's logit minus the largest other) with respect to the normalised
   input image ``x``.
2. Ranking. The first-order gain of setting pixel p to corner c (see :mod:`.corners`) is
   ``sum_b g[b, p] (v_c[b] - x[b, p])``; every (position, corner) candidate is ranked by it,
   largest first (ties in scan order).
3. Evaluation. The top-ranked candidates are classified in rank order, up to ``top`` of them (k > 1:
   the top k - 1 distinct positions at their best corners stay fixed and the k-th pixel walks down
   the ranking), stopping at the step of the first success. Steps double: 1, 2, 4, ... candidates,
   up to ``proposals`` per step. A good ranking puts a flip near the top, and an attack that
   succeeds at rank r has then spent fewer than 2 r candidates; an attack the ranking does not help
   soon puts ``proposals`` candidates in every forward pass, which keeps the passes large (a forward
   pass of a few images costs nearly as much as one of hundreds on a CPU).
4. Refinement, without a success. With ``radius`` > 0 (k = 1), a best-first search around the best
   candidates classified so far: the candidate with the lowest margin loss not yet expanded gives its
   neighbours (the other corners at its pixel, then its corner at the pixels within ``radius``), which
   are classified ``proposals`` at a time, and each expands in turn by its true margin; when every
   classified candidate is expanded, the ranking goes on where it stopped. Why: the first-order gain
   cannot see a unit that is off at the clean image and that a corner value switches on, and the
   few candidates that flip such an image can rank beyond 27,000 of 32,768 (the first-order gain of
   one even predicts a loss); but the margins of the candidates already classified show where the
   model is sensitive, and on the laptop models the flipping candidates lay within 2 pixels of the
   best of the first 32 ranked ones (or at another corner of the same pixel). Otherwise (``radius``
   0, or k > 1), Sparse-RS steps (:mod:`.sparse_rs`) start from the best ranked candidate and use
   the rest of the budget.

Query accounting, said plainly: the gradient counts as ``GRADIENT_QUERIES`` = 3 queries per attack
(a backward pass costs about two forward passes), then one query per candidate classified; an
attack's ``queries`` is that sum up to its success, or the budget ``max_queries``. The gradient is
computed one attack at a time (batch of one image: the same arithmetic whatever else is attacked),
for each target of an image, since the margin depends on the target. Batching as in
:mod:`.sparse_rs`: the ranking has no random numbers, the refinement draws from each attack's seed.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
import torch

from . import goal, sparse_rs
from .corners import Box, scan
from .evolution import Result
from .pixels import PixelObjective

#: Queries the gradient of one attack counts as: one forward pass and one backward pass (about two).
GRADIENT_QUERIES = 3


@dataclass(frozen=True)
class Settings:
    """max_queries: the budget per attack, the gradient included (> GRADIENT_QUERIES). top: ranked
    candidates classified at most before the refinement (>= 1). alpha_init, threshold, proposals:
    as :class:`.sparse_rs.Settings` (proposals: also the most ranked candidates classified per step;
    the ranked steps double up to it, :func:`ranked_step`). radius: pixels around the best candidates
    the best-first refinement explores (0: Sparse-RS refines; module docstring, 4.)."""

    max_queries: int = 2000
    top: int = 500
    alpha_init: float = 0.8
    threshold: float = 0.5
    proposals: int = 1
    radius: int = 0

    def __post_init__(self):
        if self.max_queries <= GRADIENT_QUERIES:
            raise ValueError(f"max_queries must exceed the gradient's {GRADIENT_QUERIES} queries, "
                             f"got {self.max_queries}")
        if self.radius < 0:
            raise ValueError(f"radius must be >= 0, got {self.radius}")
        if self.top < 1:
            raise ValueError(f"top must be >= 1, got {self.top}")

    def walk(self) -> sparse_rs.Settings:
        return sparse_rs.Settings(self.max_queries, self.alpha_init, self.threshold, self.proposals)


def ranked_step(proposals: int, step: int) -> int:
    """Ranked candidates classified at ``step`` (0, 1, ...) of the ranked phase: 2^step, at most ``proposals``."""
    return min(proposals, 1 << min(step, 30))


def margin_gradient(logits_fn, images: torch.Tensor, true: Sequence[int], target: Sequence[int]) -> np.ndarray:
    """(n, C, H, W) float64: the gradient of each attack's goal margin with respect to its image.

    logits_fn: the attacked model, images (N, C, H, W) -> logits (N, K); images: (n, C, H, W) on its
    device; one forward and one backward pass per image.
    """
    true_t = torch.as_tensor(np.asarray(true), dtype=torch.long)
    target_t = torch.as_tensor(np.asarray(target), dtype=torch.long)
    out = []
    with torch.inference_mode(False), torch.enable_grad():
        for i in range(images.shape[0]):
            x = images[i:i + 1].detach().clone().requires_grad_(True)
            logits = logits_fn(x).double().cpu()
            margin = -goal.margin_loss(logits[None], true_t[i:i + 1], target_t[i:i + 1])
            (grad,) = torch.autograd.grad(margin.sum(), x)
            out.append(grad[0].detach().to("cpu", torch.float64).numpy())
    return np.stack(out) if out else np.zeros((0,) + tuple(images.shape[1:]))


def ranking(gradient: np.ndarray, image: np.ndarray, box: Box) -> np.ndarray:
    """Scan indices (H W 2^C,) of the single-pixel corner candidates of ``image`` (C, H, W), by first-order
    gain of the goal margin with ``gradient`` (C, H, W), largest first; ties in scan order."""
    g = gradient.reshape(box.bands, -1)
    x = np.asarray(image, np.float64).reshape(box.bands, -1)
    gain = box.table() @ g - (g * x).sum(0)[None]  # (2^C, HW)
    return np.argsort(-gain.T.ravel(), kind="stable")


def _ranked(order: np.ndarray, box: Box, top: int) -> tuple[np.ndarray, np.ndarray]:
    """(position, corner) (top, k) of the ranked candidates: the top k - 1 distinct positions fixed
    (at their best corners), the k-th pixel walking down the rest of the ranking."""
    position, corner = scan(order, box.n_corners)
    fixed: list[int] = []
    for j in range(len(order)):
        if len(fixed) == box.pixels - 1:
            break
        if position[j] not in position[fixed]:
            fixed.append(j)
    rest = np.flatnonzero(~np.isin(position, position[fixed]))[:top]
    pos = np.concatenate([np.broadcast_to(position[fixed], (len(rest), len(fixed))), position[rest, None]], 1)
    cor = np.concatenate([np.broadcast_to(corner[fixed], (len(rest), len(fixed))), corner[rest, None]], 1)
    return pos, cor


def search(objective: PixelObjective, box: Box, true: Sequence[int], target: Sequence[int], seeds: Sequence,
           settings: Settings) -> list[Result]:
    """Run one saliency-ranked attack per task, all tasks batched; returns one :class:`Result` per task.

    objective: the tasks' objective (``logits=True``); the gradient comes from its model and images.
    true, target, seeds: as :func:`.sparse_rs.search`.
    """
    n = len(seeds)
    if not (len(true) == len(target) == n):
        raise ValueError(f"saliency: {n} seeds but {len(true)} true classes and {len(target)} targets")
    true_t = torch.as_tensor(np.asarray(true), dtype=torch.long)
    target_t = torch.as_tensor(np.asarray(target), dtype=torch.long)
    grads = margin_gradient(objective.logits_fn, objective.base, true, target)
    images = objective.base.detach().to("cpu", torch.float64).numpy()
    top = min(settings.top, settings.max_queries - GRADIENT_QUERIES)
    full = [ranking(grads[i], images[i], box) for i in range(n)]
    ranked = [_ranked(full[i], box, top) for i in range(n)]
    tried: list[list] = [[] for _ in range(n)]  # (margin loss, scan index) of every candidate classified

    queries = np.full(n, GRADIENT_QUERIES, np.int64)
    results: list[Result | None] = [None] * n
    best_loss = np.full(n, np.inf)
    best: list = [None] * n
    done = np.zeros(n, np.int64)  # ranked candidates classified
    step = 0  # every live attack is at the same step: all start together
    while True:
        live = [i for i in range(n) if results[i] is None and done[i] < len(ranked[i][0])]
        if not live:
            break
        counts = [min(ranked_step(settings.proposals, step), len(ranked[i][0]) - int(done[i])) for i in live]
        step += 1
        position = np.concatenate([ranked[i][0][done[i]:done[i] + r] for i, r in zip(live, counts)])
        corner = np.concatenate([ranked[i][1][done[i]:done[i] + r] for i, r in zip(live, counts)])
        loss, ok, probs, genome = sparse_rs.evaluate_flat(objective, box, live, counts, position, corner, true_t,
                                                          target_t, settings.threshold)
        start = 0
        for i, r in zip(live, counts):
            sl = slice(start, start + r)
            start += r
            queries[i] += r
            done[i] += r
            tried[i] += list(zip(loss[sl].tolist(), (position[sl, -1] * box.n_corners + corner[sl, -1]).tolist()))
            hits = np.flatnonzero(ok[sl])
            if len(hits):
                j = sl.start + int(hits[0])
                results[i] = Result(True, 0, int(queries[i]), genome[j].copy(), probs[j].copy())
                continue
            j = sl.start + int(np.argmin(loss[sl]))  # the first of equal minima
            if loss[j] < best_loss[i]:
                best_loss[i], best[i] = loss[j], (position[j], corner[j], probs[j].copy())

    todo = [i for i in range(n) if results[i] is None]
    if not todo:
        return results
    if settings.radius > 0 and box.pixels == 1:
        for i, r in local_search(objective, box, todo, full, tried, queries, best, true_t, target_t,
                                 settings).items():
            results[i] = r
        return results
    state = sparse_rs.State(np.stack([best[i][0] for i in todo]), np.stack([best[i][1] for i in todo]),
                            best_loss[todo].copy(),
                            np.stack([best[i][2] for i in todo]), queries[todo].copy(), np.zeros(len(todo), np.int64))
    rngs = [np.random.default_rng(seeds[i]) for i in todo]

    def evaluate(tasks: torch.Tensor, genomes: torch.Tensor) -> torch.Tensor:
        return objective(torch.as_tensor(todo)[tasks], genomes)

    walked = sparse_rs.walk(evaluate, box, true_t[todo], target_t[todo], rngs, state, [None] * len(todo),
                            settings.walk())
    for i, r in zip(todo, walked):
        results[i] = r
    return results


def neighbours(q: int, box: Box, radius: int) -> list[int]:
    """Scan indices of candidate ``q``'s neighbours: the other corners at its position (ascending),
    then its corner at the positions within ``radius`` pixels of its own (Chebyshev distance; rows,
    then columns ascending)."""
    position, corner = divmod(int(q), box.n_corners)
    y, x = divmod(position, box.width)
    return ([position * box.n_corners + c for c in range(box.n_corners) if c != corner]
            + [((y + dy) * box.width + x + dx) * box.n_corners + corner
               for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
               if (dy or dx) and 0 <= y + dy < box.height and 0 <= x + dx < box.width])


def local_search(objective: PixelObjective, box: Box, todo: list[int], full: list[np.ndarray], tried: list[list],
                 queries: np.ndarray, best: list, true_t: torch.Tensor, target_t: torch.Tensor,
                 settings: Settings) -> dict[int, Result]:
    """k = 1: after the ranked candidates, a best-first search around the best of them (module
    docstring, 4.); returns a :class:`Result` per attack of ``todo``.

    full: each attack's whole ranking (scan indices); tried: each attack's (margin loss, scan index)
    classified so far; queries, best: as :func:`search` keeps them (updated here).
    """
    heaps = {i: list(tried[i]) for i in todo}
    for h in heaps.values():
        heapq.heapify(h)
    seen = {i: {q for _, q in tried[i]} for i in todo}
    pending = {i: deque() for i in todo}
    next_rank = {i: 0 for i in todo}
    best_loss = {i: min(tried[i])[0] if tried[i] else np.inf for i in todo}
    steps = {i: 0 for i in todo}
    out: dict[int, Result] = {}

    def draw(i: int, r: int) -> list[int]:
        """The next ``r`` candidates of attack i: the neighbours of its best unexpanded candidate, then
        the next best's, ...; when none is left, the ranking's next untried candidates."""
        picked: list[int] = []
        while len(picked) < r:
            if pending[i]:
                q = pending[i].popleft()
            elif heaps[i]:
                pending[i].extend(neighbours(heapq.heappop(heaps[i])[1], box, settings.radius))
                continue
            else:
                order = full[i]
                while next_rank[i] < len(order) and int(order[next_rank[i]]) in seen[i]:
                    next_rank[i] += 1
                if next_rank[i] >= len(order):
                    break
                q = int(order[next_rank[i]])
            if q not in seen[i]:
                seen[i].add(q)
                picked.append(q)
        return picked

    live = list(todo)
    while live:
        drawn = {i: draw(i, min(settings.proposals, settings.max_queries - int(queries[i]))) for i in live}
        live = [i for i in live if drawn[i]]
        if not live:
            break
        counts = [len(drawn[i]) for i in live]
        q = np.concatenate([drawn[i] for i in live])
        position, corner = scan(q, box.n_corners)
        loss, ok, probs, genome = sparse_rs.evaluate_flat(objective, box, live, counts, position[:, None],
                                                          corner[:, None], true_t, target_t, settings.threshold)
        start, still = 0, []
        for i, r in zip(live, counts):
            sl = slice(start, start + r)
            start += r
            queries[i] += r
            steps[i] += 1
            hits = np.flatnonzero(ok[sl])
            if len(hits):
                j = sl.start + int(hits[0])
                out[i] = Result(True, steps[i], int(queries[i]), genome[j].copy(), probs[j].copy())
                continue
            for j in range(sl.start, sl.stop):
                heapq.heappush(heaps[i], (float(loss[j]), int(q[j])))
            j = sl.start + int(np.argmin(loss[sl]))  # the first of equal minima
            if loss[j] < best_loss[i]:
                best_loss[i], best[i] = loss[j], (position[j:j + 1], corner[j:j + 1], probs[j].copy())
            if queries[i] < settings.max_queries:
                still.append(i)
        live = still
    for i in todo:
        if i not in out:
            genome_i = box.genomes(np.asarray(best[i][0]).reshape(1, -1), np.asarray(best[i][1]).reshape(1, -1))[0]
            out[i] = Result(False, steps[i], int(queries[i]), genome_i, best[i][2])
    return out
