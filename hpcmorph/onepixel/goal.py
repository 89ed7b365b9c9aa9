"""What an attack is after, scored from a candidate's logits: the margin loss and success.

The margin of a candidate is the logit of the class the attack wants on top minus the largest
other logit (in nats: the log of the probability ratio). The margin loss, lower is better, is

- targeted (target t): ``max_{j != t} z_j - z_t``, negative once t leads;
- untargeted (true class y): ``z_y - max_{j != y} z_j``, negative once y no longer leads.

Unlike the target's probability it does not saturate: a candidate far from success still tells how
far. Success is the stage's own rule (:func:`reached`): a targeted attack succeeds when the
target's probability exceeds ``threshold`` (the authors: 0.5), an untargeted one when the predicted
class is no longer the true one.
"""

from __future__ import annotations

import torch

#: The target of an untargeted attack: a task's ``target`` is a class, or this.
UNTARGETED = -1


def margin_loss(logits: torch.Tensor, true: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(m, P) margin loss of logits (m, P, K) for tasks with ``true`` and ``target`` (m,) classes
    (target -1: untargeted). Same dtype as ``logits``; differentiable."""
    targeted = (target >= 0)[:, None]
    goal = torch.where(target >= 0, target, true)[:, None, None].expand(-1, logits.shape[1], 1)
    own = logits.gather(2, goal).squeeze(2)
    others = logits.scatter(2, goal, float("-inf")).amax(2)
    margin = own - others
    return torch.where(targeted, -margin, margin)


def reached(probs: torch.Tensor, true: torch.Tensor, target: torch.Tensor, threshold: float) -> torch.Tensor:
    """(m, P) bool: the candidates with class probabilities ``probs`` (m, P, K) reach their task's goal."""
    targeted = (target >= 0)[:, None]
    t = target.clamp(min=0)[:, None, None].expand(-1, probs.shape[1], 1)
    p_target = probs.gather(2, t).squeeze(2)
    return torch.where(targeted, p_target > threshold, probs.argmax(2) != true[:, None])


def score(logits: torch.Tensor, true: torch.Tensor, target: torch.Tensor, threshold: float):
    """(loss (m, P), success (m, P), probs (m, P, K)) of logits (m, P, K), all float64."""
    logits = logits.double()
    probs = torch.softmax(logits, 2)
    return margin_loss(logits, true, target), reached(probs, true, target, threshold), probs
