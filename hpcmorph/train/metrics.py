"""Table 1: accuracy and weighted precision, recall and F1 (scikit-learn), and their spread over seeds.

Ranks count their confusion matrices and sum them; the metrics are computed from the summed
matrix, which gives exactly what scikit-learn gives on the gathered predictions.
"""

from __future__ import annotations

import numpy as np

from . import variants

METRICS = ("accuracy", "precision", "recall", "f1")


def from_confusion(confusion: np.ndarray) -> dict:
    """Metrics of a confusion matrix (rows true class, columns predicted)."""
    # Imported here: the stages that import this package for its digest never compute metrics.
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    confusion = np.asarray(confusion, dtype=np.int64)
    true, pred = np.nonzero(confusion)
    counts = confusion[true, pred]
    y_true, y_pred = np.repeat(true, counts), np.repeat(pred, counts)
    if len(y_true) == 0:
        return {**{m: float("nan") for m in METRICS}, "n": 0, "confusion": confusion.tolist()}
    p, r, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], average="weighted",
                                                  zero_division=0)
    return {"accuracy": float(accuracy_score(y_true, y_pred)), "precision": float(p), "recall": float(r),
            "f1": float(f1), "n": int(len(y_true)), "confusion": confusion.tolist()}


def summarize(runs: list[dict]) -> dict:
    """{variant: {domain: {metric: [mean, std]}}} over seeds (population std, 0 for one seed)."""
    table: dict = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        table[variant] = {domain: {m: [float(np.mean([r[domain][m] for r in mine])),
                                       float(np.std([r[domain][m] for r in mine]))] for m in METRICS}
                          for domain in ("y10", "y1")}
        table[variant]["seeds"] = [r["seed"] for r in mine]
    return table


def format_table(table: dict) -> str:
    """Table 1 as Markdown."""
    lines = ["| model | metric | Y10 | Y1 |", "|---|---|---|---|"]
    for variant, rows in table.items():
        name = variants.title(variant)
        for m in METRICS:
            cells = [f"{rows[d][m][0]:.2f} ± {rows[d][m][1]:.2f}" for d in ("y10", "y1")]
            lines.append(f"| {name} | {m} | {cells[0]} | {cells[1]} |")
            name = ""
    return "\n".join(lines)
