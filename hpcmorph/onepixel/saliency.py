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
   candidates classified so far, shared by the targets of one image: the candidate with the lowest
   margin loss not yet expanded gives its ring 1 (the other corners at its pixel, then its corner at
   the 8 pixels around it), classified ``proposals`` at a time; it then waits in the queue with its
   own margin for its ring 2 (its corner at the pixels 2 away), and so on up to ``radius``. So the
   search climbs one pixel at a time while a neighbour improves, and widens around a candidate that
   stays the best (a local optimum) while the budget lasts. Every candidate one target's attack
   classifies is also scored by the margins of the image's other targets (the logits decide every
   target's margin at once) and enters their queues: an attack expands the best candidate any of
   its image's attacks found (classifying it first when it has not itself). When every queued
   candidate is expanded, the ranking goes on where it stopped. Why: the first-order gain cannot
   see a unit that is off at the clean image and that a corner value switches on, and the few
   candidates that flip such an image can rank beyond 27,000 of 32,768 (the first-order gain of one
   even predicts a loss); but the margins of the candidates already classified show where the model
   is sensitive (on a laptop image the margins of neighbouring pixels at one corner correlate, ~0.55), and
   the targets of one image share the move that matters most, lowering the true class's logit (the
   laptop run's misses lay 4 pixels from the search's best candidate for their target, or near the
   best one for the image's other target). Otherwise (``radius`` 0, or k > 1), Sparse-RS steps
   (:mod:`.sparse_rs`) start from the best ranked candidate and use the rest of the budget.

Query accounting, said plainly: the gradient counts as ``GRADIENT_QUERIES`` = 3 queries per attack
(a backward pass costs about two forward passes), then one query per candidate classified; an
attack's ``queries`` is that sum up to its success, or the budget ``max_queries``. The gradient is
computed one attack at a time (batch of one image: the same arithmetic whatever else is attacked),
for each target of an image, since the margin depends on the target. Each attack counts only the
candidates it classifies itself: a candidate of a sibling's that reaches its goal costs it one query.
Batching as in :mod:`.sparse_rs`: the ranking has no random numbers, the refinement draws from each
attack's seed, and what the targets of one image share never depends on the other images in the batch.
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
from .outcome import Result
from .pixels import PixelObjective

#: Queries the gradient of one attack counts as: one forward pass and one backward pass (about two).
GRADIENT_QUERIES = 3


@dataclass(frozen=True)
class Settings:
    """max_queries: the budget per attack, the gradient included (> GRADIENT_QUERIES). top: ranked
    candidates classified at most before the refinement (>= 1). alpha_init, threshold, proposals:
    as :class:`.sparse_rs.Settings` (proposals: also the most ranked candidates classified per step;
    the ranked steps double up to it, :func:`ranked_step`). radius: the widest ring (pixels) around a
    candidate the best-first refinement explores (0: Sparse-RS refines; module docstring, 4.)."""

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
           settings: Settings, groups: Sequence | None = None) -> list[Result]:
    """Run one saliency-ranked attack per task, all tasks batched; returns one :class:`Result` per task.

    objective: the tasks' objective (``logits=True``); the gradient comes from its model and images.
    true, target, seeds: as :func:`.sparse_rs.search`. groups: (n,) tasks with equal values attack
    the same image (its targets) and share what they classify in the refinement (module docstring,
    4.); None: every task alone.
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
    tried: list[list] = [[] for _ in range(n)]  # (scan index, margin loss, probabilities) per candidate classified

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
            tried[i] += list(zip((position[sl, -1] * box.n_corners + corner[sl, -1]).tolist(), loss[sl].tolist(),
                                 probs[sl]))
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
        groups = list(range(n)) if groups is None else list(groups)
        for i, r in local_search(objective, box, todo, full, tried, queries, best, true_t, target_t,
                                 settings, groups).items():
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


def ring(q: int, box: Box, r: int) -> list[int]:
    """Scan indices of candidate ``q``'s neighbours at distance ``r`` >= 1: at r = 1 the other corners
    at its position (ascending) first; then its corner at the positions exactly r pixels from its
    own (Chebyshev distance; rows, then columns ascending)."""
    position, corner = divmod(int(q), box.n_corners)
    y, x = divmod(position, box.width)
    return ([position * box.n_corners + c for c in range(box.n_corners) if c != corner and r == 1]
            + [((y + dy) * box.width + x + dx) * box.n_corners + corner
               for dy in range(-r, r + 1) for dx in range(-r, r + 1)
               if max(abs(dy), abs(dx)) == r and 0 <= y + dy < box.height and 0 <= x + dx < box.width])


def neighbours(q: int, box: Box, radius: int) -> list[int]:
    """Scan indices of candidate ``q``'s neighbours within ``radius``: its rings 1, 2, ... in turn."""
    return [n for r in range(1, radius + 1) for n in ring(q, box, r)]


def local_search(objective: PixelObjective, box: Box, todo: list[int], full: list[np.ndarray], tried: list[list],
                 queries: np.ndarray, best: list, true_t: torch.Tensor, target_t: torch.Tensor,
                 settings: Settings, groups: Sequence) -> dict[int, Result]:
    """k = 1: after the ranked candidates, a best-first search around the best of them, shared by the
    attacks of one image (module docstring, 4.); returns a :class:`Result` per attack of ``todo``.

    full: each attack's whole ranking (scan indices); tried: each attack's (scan index, margin loss, class
    probabilities) classified so far; queries, best: as :func:`search` keeps them (updated here);
    groups: (n,) the image of each task.
    """
    siblings = {i: [j for j in todo if groups[j] == groups[i]] for i in todo}  # i among them
    heaps: dict[int, list] = {i: [] for i in todo}
    seen = {i: {t[0] for t in tried[i]} for i in todo}
    expanded: dict[int, set] = {i: set() for i in todo}
    pending = {i: deque() for i in todo}
    next_rank = {i: 0 for i in todo}
    steps = {i: 0 for i in todo}
    out: dict[int, Result] = {}

    def share(i: int, q: list[int], loss: list[float], probs: np.ndarray) -> None:
        """Candidates ``q`` that attack i classified, with its margin losses and their class
        probabilities (m, K): into the heap of every unfinished attack of its image, each scored by
        its own goal's margin loss (the log-probabilities' margin is the logits')."""
        if not q:
            return
        log_p = torch.log(torch.as_tensor(np.asarray(probs, np.float64)).clamp_min(np.finfo(np.float64).tiny))
        for j in siblings[i]:
            if j in out:
                continue
            own = loss if j == i else goal.margin_loss(log_p[None], true_t[j:j + 1], target_t[j:j + 1])[0].tolist()
            for value, qj in zip(own, q):
                heapq.heappush(heaps[j], (float(value), int(qj), 1))

    for i in todo:
        if tried[i]:
            share(i, [t[0] for t in tried[i]], [t[1] for t in tried[i]], np.stack([t[2] for t in tried[i]]))
    best_loss = {i: min(t[1] for t in tried[i]) if tried[i] else np.inf for i in todo}

    def draw(i: int, r: int) -> list[int]:
        """The next ``r`` candidates of attack i: the best unexpanded candidate its image's attacks
        classified (by i's margin; one i has not classified itself first), then its neighbours, then
        the next best's, ...; when none is left, the ranking's next untried candidates."""
        picked: list[int] = []
        while len(picked) < r:
            if pending[i]:
                q = pending[i].popleft()
            elif heaps[i]:
                loss, q, r = heapq.heappop(heaps[i])
                if (q, r) not in expanded[i]:
                    expanded[i].add((q, r))
                    pending[i].extend(([q] if r == 1 else []) + ring(q, box, r))
                    if r < settings.radius:
                        heapq.heappush(heaps[i], (loss, q, r + 1))
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
            else:
                j = sl.start + int(np.argmin(loss[sl]))  # the first of equal minima
                if loss[j] < best_loss[i]:
                    best_loss[i], best[i] = loss[j], (position[j:j + 1], corner[j:j + 1], probs[j].copy())
                if queries[i] < settings.max_queries:
                    still.append(i)
        start = 0
        for i, r in zip(live, counts):
            share(i, q[start:start + r].tolist(), loss[start:start + r].tolist(), probs[start:start + r])
            start += r
        live = still
    for i in todo:
        if i not in out:
            genome_i = box.genomes(np.asarray(best[i][0]).reshape(1, -1), np.asarray(best[i][1]).reshape(1, -1))[0]
            out[i] = Result(False, steps[i], int(queries[i]), genome_i, best[i][2])
    return out
