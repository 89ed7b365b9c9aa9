"""Training curves: loss and validation accuracy per epoch."""

from __future__ import annotations

from pathlib import Path

from .. import plots


# The domain term's name in the legend, by variants.Variant.term.
TERM_LABELS = {"mmd": "train MMD²", "coral": "train CORAL", "dann": "train domain BCE", "sinkhorn": "train Sinkhorn"}


def training_curves(history: list[dict], path: Path, title: str, term: str | None = None) -> Path:
    """Loss and validation accuracy per epoch of ``history`` (history.csv's rows); ``term``: the variant's
    domain term (:mod:`.variants`), drawn beside the losses when there is one."""
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (total)")
    ax1.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation (Y10 CE)")
    if term is not None:
        ax1.plot(epochs, [h["train_discrepancy"] for h in history], "^--", label=TERM_LABELS.get(term, term))
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend(fontsize=7)
    ax2.plot(epochs, [h["val_accuracy"] for h in history], "o-", color="k")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation accuracy (Y10)")
    ax2.set_ylim(0, 1)
    fig.suptitle(title, fontsize=9)
    return plots.save(fig, path)[0]
