"""Attacks in reduced precision, decisions in float32 (``attack.precision``).

The search (every method's candidates, :class:`hpcmorph.onepixel.pixels.PixelObjective`) may classify its
candidates with a bfloat16 or float16 copy of the attacked model: channels-last, batch norms folded
into the convolutions (:func:`.certify.reduced_copy`, the certifier's screen), 2.7x the float32
throughput of a 64 x 64 laptop model at 512 images a pass on an AVX512-BF16 CPU. Its logits differ
from float32's by up to 0.4-1.6 nats on the laptop models, enough to turn a candidate near the goal
either way; so:

- every candidate whose reduced-precision goal margin (:func:`.certify.goal_margin`) comes within
  ``CHECK_MARGIN`` nats of success is classified again by the model in float32, and the method sees
  the float32 answer for it: only float32 says that a candidate succeeded. The re-classification is
  a query of the attack whose goal the candidate came near (of each such attack of the image, for the
  exhaustive search, which scores an image's candidates for all its targets), up to and including
  the attack's first success; ``checked`` counts them per attack, ``rejected`` those of them the
  reduced precision called a success and float32 did not;
- so is every candidate whose reduced-precision margin is NaN;
- a candidate the reduced precision puts further than ``CHECK_MARGIN`` from its goal is a failure
  without a float32 pass: a search may so miss a candidate that float32 would call a success (the
  price of the speed; the margin makes it rare, docs/attack.md "Precision" measures it);
- the gradient of the saliency ranking stays float32 (the objective's ``logits_fn``), and so does
  the certifying scan (its own objective), so the ranked order and the certificates are float32's.

A failure's best candidate is classified again in float32 at the end (a query too): every
probability in the file is float32's, and a failure float32 calls a success is one
(:func:`settle`). Same batching, same arithmetic: a run gives the same file on any number of ranks.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .. import precision
from ..onepixel import goal
from ..onepixel.pixels import PixelObjective, forward_logits
from . import certify

#: Candidates whose reduced-precision goal margin exceeds -CHECK_MARGIN (nats) are classified again
#: in float32. The bfloat16 copy of a laptop model errs by up to 0.4-1.6 nats on the margin; most
#: candidates of a search are much further from their goal than that.
CHECK_MARGIN = 0.25


def reduced(model: torch.nn.Module, arithmetic: str):
    """The attacked model's logits in ``arithmetic`` (resolved: fp32, bf16, fp16): None for fp32, else a
    function of images (N, C, H, W) float32 -> float32 logits (N, K) by a reduced-precision copy."""
    if arithmetic == "fp32":
        return None
    dtype = precision.DTYPES[arithmetic]
    fast = certify.reduced_copy(model, dtype)

    def logits(x: torch.Tensor) -> torch.Tensor:
        out = fast(x.to(dtype).contiguous(memory_format=torch.channels_last))
        return (out[1] if isinstance(out, tuple) else out).float()

    return logits


def goals_of(method: str, groups, true, target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(task, true, target) (n, G) of the goals each objective row is scored for: its own task's, or, for
    the exhaustive search (which scores an image's candidates from its first task's row), every task
    of the row's image; -1 pads."""
    groups, true, target = np.asarray(groups), np.asarray(true), np.asarray(target)
    n = len(groups)
    if method != "exhaustive":
        return np.arange(n)[:, None], true[:, None], target[:, None]
    members = [np.flatnonzero(groups == groups[i]) for i in range(n)]
    width = max((len(m) for m in members), default=1)
    task = np.full((n, width), -1, np.int64)
    for i, m in enumerate(members):
        task[i, :len(m)] = m
    safe = np.maximum(task, 0)
    return task, np.where(task >= 0, true[safe], 0), np.where(task >= 0, target[safe], -1)


class CheckedObjective(PixelObjective):
    """A :class:`hpcmorph.onepixel.pixels.PixelObjective` that classifies candidates with ``reduced_fn`` and those near
    a goal again with ``logits_fn`` (float32; module docstring).

    goals: (task, true, target) (n, G) per objective row (:func:`goals_of`); threshold: the goal's
    (:mod:`hpcmorph.onepixel.goal`). ``checked`` and ``rejected`` (n,): per task, its float32 re-classifications and the
    reduced-precision successes float32 rejected among them, up to its first success (:meth:`_count`);
    ``queries`` counts the images the model classified in either precision.
    """

    def __init__(self, logits_fn, reduced_fn, base: torch.Tensor, pixels: int, goals, threshold: float,
                 forward_batch: int = 1024, logits: bool = False, margin: float = CHECK_MARGIN):
        super().__init__(logits_fn, base, pixels, forward_batch, logits)
        self.reduced_fn, self.threshold, self.margin = reduced_fn, threshold, margin
        task, true, target = (torch.as_tensor(np.asarray(g), dtype=torch.long) for g in goals)
        self.goal_task, self.goal_true, self.goal_target = task, true, target
        self.checked = np.zeros(len(base), np.int64)
        self.rejected = np.zeros(len(base), np.int64)
        self.succeeded = np.zeros(len(base), bool)

    def _answer(self, rows: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        z = forward_logits(self.reduced_fn, images)
        task = self.goal_task[rows.cpu()]                     # (N, G)
        margin = self._margin(z.cpu(), rows)
        # A margin the reduced precision could not compute (NaN: oneDNN's bfloat16 convolutions on
        # some tiny non-square maps return garbage) says nothing: float32 answers for it.
        claimed = (task >= 0) & ((margin > -self.margin) | torch.isnan(margin))
        near = torch.nonzero(claimed.any(1)).flatten()
        if len(near):
            z32 = forward_logits(self.logits_fn, images[near.to(images.device)])
            said = self._margin(z.cpu()[near], rows[near]) > 0
            kept = self._margin(z32.cpu(), rows[near]) > 0
            self._count(task[near].numpy(), claimed[near].numpy(), said.numpy(), kept.numpy())
            z = z.clone()
            z[near.to(z.device)] = z32
            self.queries += len(near)
        if z.is_cuda:
            torch.cuda.synchronize(z.device)
        self.forward_seconds += time.perf_counter() - t0
        return z if self.logits else torch.softmax(z, 1)

    def _count(self, task: np.ndarray, claimed: np.ndarray, said: np.ndarray, kept: np.ndarray) -> None:
        """Charge the re-classified candidates (M, in the attacks' order) to the attacks that claimed them
        (task, claimed (M, G)): each attack up to and including its first float32 success, none after
        (an exhaustive search without early exit goes on counting flips; those are not its queries).
        said, kept: (M, G) the goal reached in reduced precision, in float32."""
        order = np.broadcast_to(np.arange(len(task))[:, None], task.shape)
        safe = np.maximum(task, 0)
        won = claimed & kept
        first = np.full(len(self.checked), len(task), np.int64)
        np.minimum.at(first, task[won], order[won])
        counted = claimed & ~self.succeeded[safe] & (order <= first[safe])
        np.add.at(self.checked, task[counted], 1)
        np.add.at(self.rejected, task[counted & said & ~kept], 1)
        self.succeeded[task[won]] = True

    def _margin(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(N, G) goal margins (nats) of candidates with ``logits`` (N, K) for their rows' goals."""
        n, g = len(rows), self.goal_task.shape[1]
        per = logits.double()[:, None, :].expand(n, g, -1).reshape(n * g, 1, -1)
        true, target = self.goal_true[rows.cpu()].reshape(-1), self.goal_target[rows.cpu()].reshape(-1)
        return certify.goal_margin(per, true, target, self.threshold).reshape(n, g)


def settle(results: list, objective: PixelObjective, true, target, threshold: float) -> list:
    """The methods' results (in place) as float32 has the last word on them: each failure's best candidate
    classified again in float32 (its probabilities then float32's; should float32 call it a success, it
    is one), and each attack's float32 re-classifications added to its queries. Float32 runs: as they are."""
    if not isinstance(objective, CheckedObjective):
        return results
    failed = [i for i, r in enumerate(results) if not r.success]
    if failed:
        exact = PixelObjective(objective.logits_fn, objective.base, objective.pixels, objective.forward_batch,
                               logits=True)
        genomes = torch.from_numpy(np.stack([np.ravel(results[i].genome) for i in failed]))[:, None]
        tasks = torch.as_tensor(failed)
        _, ok, probs = goal.score(exact(tasks, genomes), torch.as_tensor(np.asarray(true))[tasks],
                                  torch.as_tensor(np.asarray(target))[tasks], threshold)
        objective.queries += exact.queries
        objective.forward_seconds += exact.forward_seconds
        for j, i in enumerate(failed):
            objective.checked[i] += 1
            results[i].probs = probs[j, 0].numpy().copy()
            if bool(ok[j, 0]):
                results[i].success = True
                results[i].flips = results[i].flips + 1 if results[i].flips >= 0 else -1
    for r, extra in zip(results, objective.checked):
        r.queries += int(extra)
    return results


def counts(objective: PixelObjective) -> dict[str, np.ndarray]:
    """The columns ``checked`` and ``rejected`` (n,) of the objective's attacks (zeros in float32)."""
    if isinstance(objective, CheckedObjective):
        return {"checked": objective.checked.copy(), "rejected": objective.rejected.copy()}
    n = len(objective.base)
    return {"checked": np.zeros(n, np.int64), "rejected": np.zeros(n, np.int64)}
