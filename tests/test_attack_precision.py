"""attack.precision: the search in reduced precision, every success decided in float32 (hpcmorph.attack.mixed).

A toy model whose bfloat16 and float32 answers differ by construction: class 1 wins when one pixel's
band 0 exceeds 0.4997, a threshold between the candidate value 0.4995 and its bfloat16 rounding 0.5
(the reduced copy sees bfloat16 images). So bfloat16 calls that candidate a success and float32 does
not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import H, W
from hpcmorph import config, precision
from hpcmorph.attack import methods, mixed, stage
from hpcmorph.onepixel import corners

pytestmark = pytest.mark.usefixtures("one_thread")

ROUNDED = (2, 1)   # (x, y): band 0 at 0.4995 flips the class in bfloat16 only
BRIGHT = (5, 4)    # (x, y): band 1 at its upper corner flips to class 2 in both precisions
EDGE, CUT = 0.4995, 0.4997


class Rounding(torch.nn.Module):
    """logit_0 = 0; logit_1 = 1e4 (x[0, ROUNDED] - CUT) (a bfloat16 input rounds EDGE up to 0.5: +3; a
    float32 one keeps it: -2); logit_2 = 10 (x[1, BRIGHT] - 0.9); in float32 from the input's values."""

    def forward(self, x):
        l1 = 1e4 * (x[:, 0, ROUNDED[1], ROUNDED[0]].float() - CUT)
        l2 = 10 * (x[:, 1, BRIGHT[1], BRIGHT[0]].float() - 0.9)
        return torch.stack([torch.zeros_like(l1), l1, l2], 1)


class _Attack:
    """Stands in for cfg.attack in methods.attack."""

    method, threshold, forward_batch, early_exit = "exhaustive", 0.5, 256, False


def _attack(arithmetic, unchecked=False):
    """The exhaustive search for targets 1 and 2 of one flat image: in ``arithmetic`` with float32
    deciding, or (unchecked) with the reduced-precision model alone deciding."""
    model = Rounding()
    base = torch.full((2, 3, H, W), 0.2)
    box = corners.Box.of(1, 3, H, W, ([0.0, 0.0, 0.0], [EDGE, 1.0, 1.0]))
    if unchecked:
        return methods.attack(_Attack(), mixed.reduced(model, arithmetic), base, [0, 0], [0, 0], [1, 2],
                              [None, None], box)
    return methods.attack(_Attack(), model, base, [0, 0], [0, 0], [1, 2], [None, None], box,
                          mixed.reduced(model, arithmetic))


def test_a_bfloat16_success_float32_rejects_is_not_recorded():
    model = Rounding()
    x = torch.full((2, 3, H, W), 0.2)
    x[:, 0, ROUNDED[1], ROUNDED[0]] = EDGE
    assert mixed.reduced(model, "bf16")(x)[0, 1] > 0 > model(x)[0, 1], "the toy must disagree by construction"

    alone, _ = _attack("bf16", unchecked=True)
    assert alone[0].success, "bfloat16 alone would record the attack at target 1"
    exact, plain = _attack("fp32")
    checked, objective = _attack("bf16")
    assert isinstance(objective, mixed.CheckedObjective) and not isinstance(plain, mixed.CheckedObjective)
    # Target 1: only the 4 candidates at ROUNDED with band 0 high reach it, in bfloat16 alone.
    assert not exact[0].success and not checked[0].success and checked[0].flips == 0
    assert objective.rejected.tolist() == [4, 0]
    # Target 2: 4 corners at BRIGHT (band 1 high) in both; the same first candidate, float32's probabilities.
    assert exact[1].success and checked[1].success and exact[1].flips == checked[1].flips == 4
    np.testing.assert_array_equal(exact[1].genome, checked[1].genome)
    np.testing.assert_allclose(exact[1].probs, checked[1].probs, rtol=1e-6)
    # A float32 re-classification is a query of the attack it was made for, up to its first success:
    # the 4 rejected and the failure's best candidate for target 1; the first success for target 2
    # (no other candidate comes near its goal; the search goes on counting flips, not queries).
    assert objective.checked.tolist() == [4 + 1, 1]
    assert checked[0].queries == exact[0].queries + objective.checked[0]
    assert checked[1].queries == exact[1].queries + objective.checked[1]


class Blind(Rounding):
    """Rounding, whose bfloat16 copy answers NaN for the candidates that reach target 2 (what oneDNN's
    bfloat16 convolutions give on some tiny non-square maps)."""

    def forward(self, x):
        out = super().forward(x)
        if x.dtype == torch.bfloat16:
            lit = x[:, 1, BRIGHT[1], BRIGHT[0]].float() > 0.9
            out = torch.where(lit[:, None], torch.nan, out)
        return out


def test_a_nan_in_reduced_precision_is_classified_in_float32():
    model, base = Blind(), torch.full((2, 3, H, W), 0.2)
    box = corners.Box.of(1, 3, H, W, ([0.0, 0.0, 0.0], [EDGE, 1.0, 1.0]))
    found, objective = methods.attack(_Attack(), model, base, [0, 0], [0, 0], [1, 2], [None, None], box,
                                      mixed.reduced(model, "bf16"))
    assert found[1].success and found[1].flips == 4 and objective.checked[1] == 1
    assert np.isfinite(found[1].probs).all()


def test_precision_setting_validated_resolved_and_in_the_digest():
    cfg = config.load("tiny")
    assert cfg.attack.precision == "auto"
    with pytest.raises(config.ConfigError):
        config.load("tiny", ["attack.precision=half"])
    digests = {stage.digest(config.load("tiny", [f"attack.precision={p}"])) for p in precision.PRECISIONS}
    assert len(digests) == len(precision.PRECISIONS)
    cpu = torch.device("cpu")
    assert stage.arithmetic(config.load("tiny", ["attack.precision=fp32"]), cpu) == "fp32"
    assert stage.arithmetic(cfg, cpu) == ("bf16" if precision.native_bf16(cpu) else "fp32")
    assert mixed.reduced(Rounding(), "fp32") is None
    # The exhaustive search, the ground truth, classifies in float32 whatever the setting says.
    exhaustive = [config.load("tiny", ["attack.method=exhaustive", f"attack.precision={p}"]) for p in ("bf16", "fp32")]
    assert {stage.arithmetic(c, cpu) for c in exhaustive} == {"fp32"}
    assert len({stage.digest(c) for c in exhaustive}) == 1
