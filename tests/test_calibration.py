"""Calibration (analyze/calibration.py): ECE and the multiclass Brier score against hand computations,
and the comparison table's handling of what a run did not measure (analyze/comparison.py)."""

from __future__ import annotations

import numpy as np
import pytest

from hpcmorph.analyze import calibration, comparison


def _probs(top: float, n: int, cls: int = 0) -> np.ndarray:
    """n rows whose top class is ``cls`` with probability ``top``, the rest split evenly."""
    p = np.full((n, 3), (1 - top) / 2)
    p[:, cls] = top
    return p


def test_ece_is_zero_when_every_bin_is_as_right_as_it_is_confident():
    # 10 images at confidence 0.8, 8 right; 4 at 0.5, 2 right: each bin's accuracy is its confidence.
    p = np.vstack([_probs(0.8, 10), _probs(0.5, 4)])
    labels = np.array([0] * 8 + [1] * 2 + [0] * 2 + [2] * 2)
    assert calibration.ece(p, labels, bins=15) == pytest.approx(0.0, abs=1e-12)
    r = calibration.reliability(p, labels, bins=15)
    assert sum(r["count"]) == 14 and r["count"][calibration.bin_of(np.array([0.8]), 15)[0]] == 10
    assert [a for a in r["accuracy"] if a is not None] == pytest.approx([0.5, 0.8])


def test_ece_of_overconfident_and_of_two_bins_by_hand():
    # Every image at confidence 0.9, 6 of 10 right: ECE = |0.6 - 0.9| = 0.3.
    p, labels = _probs(0.9, 10), np.array([0] * 6 + [1] * 4)
    assert calibration.ece(p, labels) == pytest.approx(0.3)
    # Two bins: 4 images at 0.95 all right (gap 0.05), 6 at 0.55 with 1 right (gap 0.55 - 1/6).
    p = np.vstack([_probs(0.95, 4), _probs(0.55, 6)])
    labels = np.array([0] * 4 + [0] + [1] * 5)
    assert calibration.ece(p, labels, bins=10) == pytest.approx(0.4 * 0.05 + 0.6 * (0.55 - 1 / 6))
    # The bins are (lo, hi]: 0.6 lies in the bin ending at 0.6, 0 in the first, 1 in the last.
    assert list(calibration.bin_of(np.array([0.0, 0.6, 0.6000001, 1.0]), 5)) == [0, 2, 3, 4]
    assert calibration.ece(np.zeros((0, 3)), np.zeros(0, int)) is None


def test_multiclass_brier_by_hand_and_against_sklearn_for_two_classes():
    from sklearn.metrics import brier_score_loss

    p = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    # (0.3^2 + 0.2^2 + 0.1^2 + 0.2^2 + 0.5^2 + 0.7^2) / 2 = (0.14 + 0.78) / 2
    assert calibration.brier(p, np.array([0, 2])) == pytest.approx(0.46)
    assert calibration.brier(np.eye(3), np.arange(3)) == 0.0
    assert calibration.brier(np.eye(3)[[1, 2, 0]], np.arange(3)) == pytest.approx(2.0)
    assert calibration.brier(np.full((4, 3), 1 / 3), np.array([0, 1, 2, 0])) == pytest.approx(2 / 3)
    # Two classes: the sum over both classes is twice scikit-learn's binary score of class 1.
    rng = np.random.default_rng(0)
    q = rng.uniform(size=50)
    y = (rng.uniform(size=50) < q).astype(int)
    two = np.stack([1 - q, q], axis=1)
    assert calibration.brier(two, y) == pytest.approx(2 * brier_score_loss(y, q))


def test_measure_goes_from_logits_and_pooling_weights_bins_by_images():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.5]])
    m = calibration.measure(logits, np.array([0, 0, 2]), bins=4)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert m["n"] == 3 and m["accuracy"] == pytest.approx(2 / 3)
    assert m["brier"] == pytest.approx(calibration.brier(p, np.array([0, 0, 2])))
    a = {"edges": [0, 0.5, 1], "count": [1, 3], "confidence": [0.4, 0.9], "accuracy": [0.0, 1.0]}
    b = {"edges": [0, 0.5, 1], "count": [0, 1], "confidence": [None, 0.5], "accuracy": [None, 0.0]}
    pooled = calibration.pooled_reliability([a, b])
    assert pooled["count"] == [1, 4] and pooled["confidence"] == pytest.approx([0.4, (2.7 + 0.5) / 4])
    assert pooled["accuracy"] == pytest.approx([0.0, 0.75])


def _seed_result(seed: int, variants: list[str], certified: bool) -> dict:
    """One analysed seed's numbers as analyse_seed gives them, only what the comparison reads."""
    cert = {"attacked": 4, "flipped": 2, "flippable": 3, "undecided": 0} if certified else None
    row = {"attacked": 4, "flipped": 2, "budget": 200, "certification": cert,
           "curve": {"queries": [5, 50], "flipped_fraction": [0.25, 0.5]}}
    measures = {"y10": {"ece": 0.1 + seed, "brier": 0.2, "n": 8}, "y1": {"ece": 0.3, "brier": 0.4, "n": 8}}
    return {"seed": seed, "variants": variants,
            "methods": {"configured": {"method": "saliency", "range": "data", "pixels": 1},
                        "ranges": {"data": {"models": {v: {"saliency": dict(row)} for v in variants}}}},
            "success_vs_k": {"k": [1, 2], "flipped_fraction": {v: [0.5, 0.75] for v in variants}},
            "calibration": {v: measures for v in ("regular", "coral", "mmd")}}


def test_comparison_has_a_row_per_trained_variant_and_blanks_for_what_was_not_run():
    runs = [{"variant": v, "seed": s, "y10": {"accuracy": 0.8 + s / 10}, "y1": {"accuracy": 0.5}}
            for v in ("regular", "coral", "mmd") for s in (0, 1)]
    results = [_seed_result(s, ["mmd", "regular"], certified=s == 0) for s in (0, 1)]
    table2 = {"regular": {"scale_free": {"y10_y1": {"value": 0.3, "n": 4}, "y10_attacked": {"value": 0.2, "n": 0}}}}
    t = comparison.table(["regular", "coral", "mmd"], results, runs, table2, [2, 3], bins=15)
    assert t["variants"] == ["regular", "coral", "mmd"] and t["ranges"] == ["data"] and t["k"] == [2, 3]
    reg, coral = t["rows"]["regular"], t["rows"]["coral"]
    assert reg["accuracy_y10"]["values"] == pytest.approx([0.8, 0.9]) and reg["accuracy_y10"]["seeds"] == [0, 1]
    assert reg["ece_y10"]["mean"] == pytest.approx(0.6) and reg["ece_y10"]["std"] == pytest.approx(np.sqrt(0.5))
    assert reg["one_pixel"]["data"]["search"]["values"] == [0.5, 0.5]
    # Seed 1 was not certified: the exact fraction is not run, not the search's.
    assert reg["one_pixel"]["data"]["exact"] is None and reg["one_pixel"]["data"]["exact_source"] is None
    assert reg["success_k"]["2"]["mean"] == 0.75 and reg["success_k"]["3"] is None
    assert reg["within_budget"]["10"]["values"] == [0.25, 0.25] and reg["within_budget"]["100"]["mean"] == 0.5
    assert reg["distance_y10_y1"]["value"] == 0.3 and reg["distance_y10_attacked"] is None
    # Trained, not attacked: accuracy and calibration, every attack column not run.
    assert not coral["attacked"] and coral["ece_y1"]["mean"] == pytest.approx(0.3)
    assert coral["one_pixel"] == {"data": None} and set(coral["success_k"].values()) == {None}
    assert coral["distance_y10_y1"] is None
    both = [_seed_result(s, ["regular"], certified=True) for s in (0, 1)]
    exact = comparison.table(["regular"], both, runs, {}, [2], bins=15)["rows"]["regular"]["one_pixel"]["data"]
    assert exact["exact"]["values"] == [0.75, 0.75] and exact["exact_source"] == "certified"
    assert comparison.table(["regular"], both, runs, {}, [], 15, budgets=(500,))["rows"]["regular"][
        "within_budget"] == {"500": None}  # above the attack's budget of 200
