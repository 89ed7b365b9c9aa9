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
4. Refinement. Without a success, Sparse-RS steps (:mod:`.sparse_rs`) start from the best ranked
   candidate (lowest margin loss) and use the rest of the budget.

Query accounting, said plainly: the gradient counts as ``GRADIENT_QUERIES`` = 3 queries per attack
(a backward pass costs about two forward passes), then one query per candidate classified; an
attack's ``queries`` is that sum up to its success, or the budget ``max_queries``. The gradient is
computed one attack at a time (batch of one image: the same arithmetic whatever else is attacked),
for each target of an image, since the margin depends on the target. Batching as in
:mod:`.sparse_rs`: the ranking has no random numbers, the refinement draws from each attack's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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
    candidates classified at most before the random search (>= 1). alpha_init, threshold, proposals:
    as :class:`.sparse_rs.Settings` (proposals: also the most ranked candidates classified per step;
    the ranked steps double up to it, :func:`ranked_step`)."""

    max_queries: int = 2000
    top: int = 500
    alpha_init: float = 0.8
    threshold: float = 0.5
    proposals: int = 1

    def __post_init__(self):
        if self.max_queries <= GRADIENT_QUERIES:
            raise ValueError(f"max_queries must exceed the gradient's {GRADIENT_QUERIES} queries, "
                             f"got {self.max_queries}")
        if self.top < 1:
            raise ValueError(f"top must be >= 1, got {self.top}")

    def walk(self) -> sparse_rs.Settings:
        return sparse_rs.Settings(self.max_queries, self.alpha_init, self.threshold, self.proposals)


def ranked_step(proposals: int, step: int) -> int:
    """Ranked candidates classified at ``step`` (0, 1, ...) of the ranked phase: 2^step, at most ``proposals``."""
    return min(proposals, 1 << min(step, 30))


class _LeakyBackward(torch.autograd.Function):
    """ReLU forward; backward passes ``slope`` of the gradient where the unit is off (0: ReLU's own)."""

    @staticmethod
    def forward(ctx, x, slope):
        ctx.save_for_backward(x)
        ctx.slope = slope
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.where(x > 0, torch.ones_like(x), torch.full_like(x, ctx.slope)), None


class LeakyBackwardReLU(torch.nn.Module):
    """A ReLU whose gradient leaks ``slope`` through inactive units: the gradient of a surrogate whose
    forward pass is the model's own."""

    def __init__(self, slope: float):
        super().__init__()
        self.slope = float(slope)

    def forward(self, x):
        return _LeakyBackward.apply(x, self.slope)


def surrogate(model: torch.nn.Module, slope: float) -> torch.nn.Module:
    """A copy of ``model`` whose ReLU modules leak ``slope`` of the gradient (the forward pass unchanged).

    A corner value is far from the pixel's own: it can switch on units that are off at the clean image,
    whose gradient there is 0. The leak lets their pull through to the ranking.
    """
    copy_ = __import__("copy").deepcopy(model)
    for module in list(copy_.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.ReLU):
                setattr(module, name, LeakyBackwardReLU(slope))
    return copy_


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
    ranked = [_ranked(ranking(grads[i], images[i], box), box, top) for i in range(n)]

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
