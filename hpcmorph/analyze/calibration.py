"""Calibration: how far a model's softmax confidence is from how often it is right.

A model's class probabilities come from its head applied to the test images' latents (the same
latents Table 2 measures, ``latents.h5``), as ``softmax(model.classify_latent(z))``, in float64.

- **Expected calibration error** (:func:`ece`), *top-label* (Guo et al. 2017): the confidence of an
  image is its largest class probability; images are put in ``bins`` equal-width confidence bins
  over [0, 1] (bin b holds confidences in ((b - 1) / bins, b / bins], the first bin also 0), and
  ECE = sum_b (n_b / n) |accuracy_b - mean confidence_b|, accuracy_b the fraction of bin b's images
  whose top class is their true class. 0 is perfectly calibrated; at most 1. A fraction, no unit.
- **Brier score** (:func:`brier`), multiclass (Brier 1950): the mean over images of
  sum_c (p_c - y_c)^2, y the one-hot true class. 0 for certain and right, 2 for certain and wrong;
  a uniform guess over C classes scores 1 - 1/C. scikit-learn's ``brier_score_loss`` is the binary
  score (one class's probability): for two classes this one is twice it.
- **Reliability** (:func:`reliability`): per bin, the images in it, their mean confidence and their
  accuracy: the points of a reliability diagram (a perfectly calibrated model lies on the diagonal).
"""

from __future__ import annotations

import numpy as np

DEFINITION = ("top-label ECE over equal-width confidence bins (confidence: the largest softmax probability; "
              "bin b holds ((b-1)/bins, b/bins]); Brier: mean over images of sum over classes of "
              "(p_c - [c = true class])^2")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities (n, C), float64, of logits (n, C)."""
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    if p.ndim != 2 or y.shape != (len(p),):
        raise ValueError(f"calibration: probabilities (n, C) and labels (n,) expected, got {p.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"calibration: labels must lie in [0, {p.shape[1]}), got [{y.min()}, {y.max()}]")
    return p, y


def bin_of(confidence: np.ndarray, bins: int) -> np.ndarray:
    """The equal-width bin (0 .. bins - 1) of each confidence in [0, 1]: ((b - 1) / bins, b / bins]
    is bin b - 1, and 0 goes in the first bin."""
    return np.clip(np.ceil(np.asarray(confidence, np.float64) * bins).astype(np.int64) - 1, 0, bins - 1)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """The reliability diagram's numbers: {"edges" (bins + 1), "count", "confidence" (mean, None for
    an empty bin), "accuracy" (None for an empty bin)}, one entry per bin."""
    p, y = _check(probs, labels)
    conf = p.max(axis=1) if len(p) else np.zeros(0)
    correct = (p.argmax(axis=1) == y) if len(p) else np.zeros(0, bool)
    b = bin_of(conf, bins)
    count = np.bincount(b, minlength=bins)
    conf_sum = np.bincount(b, weights=conf, minlength=bins)
    right = np.bincount(b, weights=correct.astype(np.float64), minlength=bins)
    return {"edges": [i / bins for i in range(bins + 1)], "count": [int(c) for c in count],
            "confidence": [float(s / c) if c else None for s, c in zip(conf_sum, count)],
            "accuracy": [float(r / c) if c else None for r, c in zip(right, count)]}


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float | None:
    """Top-label expected calibration error over ``bins`` equal-width confidence bins (module
    docstring); None for no images."""
    r = reliability(probs, labels, bins)
    n = sum(r["count"])
    if not n:
        return None
    return float(sum(c / n * abs(a - m) for c, a, m in zip(r["count"], r["accuracy"], r["confidence"]) if c))


def brier(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Multiclass Brier score: mean over images of sum_c (p_c - y_c)^2; None for no images."""
    p, y = _check(probs, labels)
    if not len(y):
        return None
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def measure(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """{"n", "accuracy", "ece", "brier", "reliability"} of one model on one test set."""
    p, y = _check(softmax(logits) if len(logits) else np.zeros((0, np.shape(logits)[-1])), labels)
    return {"n": int(len(y)), "accuracy": float(np.mean(p.argmax(1) == y)) if len(y) else None,
            "ece": ece(p, y, bins), "brier": brier(p, y), "reliability": reliability(p, y, bins)}


def pooled_reliability(parts: list[dict]) -> dict:
    """Several :func:`reliability` results (the seeds of one model) as one: their images together."""
    bins = len(parts[0]["count"])
    count = [sum(r["count"][b] for r in parts) for b in range(bins)]

    def weighted(key: str) -> list:
        return [sum(r[key][b] * r["count"][b] for r in parts if r["count"][b]) / count[b] if count[b] else None
                for b in range(bins)]

    return {"edges": parts[0]["edges"], "count": count, "confidence": weighted("confidence"),
            "accuracy": weighted("accuracy")}


def logits(model, z: np.ndarray) -> np.ndarray:
    """The model's logits (n, C) of latents ``z`` (n, D): its head alone (``classify_latent``), float32."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(z, np.float32)).to(device)
        return model.classify_latent(x).float().cpu().numpy()


def of_model(model, z_y10: np.ndarray, z_y1: np.ndarray, labels: np.ndarray, bins: int) -> dict:
    """{"y10"|"y1": :func:`measure`} of one model from its latents of the Y10 and Y1 test images."""
    return {domain: measure(logits(model, z), labels, bins) for domain, z in (("y10", z_y10), ("y1", z_y1))}
