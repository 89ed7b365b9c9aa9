"""What every one-pixel (k-pixel) search shares: the objective it calls and the record of one attack's outcome.

A search classifies candidates through an objective (:data:`Objective`, e.g.
:class:`.pixels.PixelObjective`) and ends each attack with a :class:`Result`, whatever the method
(differential evolution, the exhaustive scan, Sparse-RS, the saliency-ranked search).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

#: ``evaluate(tasks, genomes) -> probs``: class probabilities (m, P, K) of the candidates
#: ``genomes`` (m, P, D) of the tasks numbered ``tasks`` (m,) in the batch (their logits instead
#: when ``Settings.fitness`` is "margin").
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Result:
    """One attack's outcome (every method's: see :mod:`hpcmorph.attack.methods`).

    success: the attack reached its goal.
    generations: generations evolved before it stopped (0: a member of the initial population
        succeeded; G: it ran out). Other methods: their steps after the first candidate.
    queries: candidates evaluated by the model for this attack (P for the initial population, P per
        generation): ``population * (generations + 1)``. Other methods: queries used until success, or
        until the budget ran out.
    genome: (D,) the successful candidate (the one scoring best among those that succeeded in the
        stopping generation) or, on failure, the best member of the final population.
    probs: (K,) the model's class probabilities for that candidate.
    flips: candidates found that reach the goal, where a method counted them all (the exhaustive
        search without early exit); else -1.
    """

    success: bool
    generations: int
    queries: int
    genome: np.ndarray
    probs: np.ndarray
    flips: int = -1
