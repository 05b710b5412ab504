"""Pre-training curves: training loss and accuracy, validation accuracy per epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def curves_figure(history: Sequence[Mapping[str, float]]) -> Figure:
    """Pre-training curves: training loss (left); training and validation accuracy (right).

    ``history`` rows need ``epoch``, ``train_loss``, ``train_acc``, ``val_acc`` and ``val_ci95``.
    """
    epoch = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(epoch, [h["train_loss"] for h in history], marker=".", color="C0")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    val = np.array([h["val_acc"] for h in history])
    ci = np.array([h["val_ci95"] for h in history])
    ax_acc.plot(epoch, [h["train_acc"] for h in history], marker=".", color="C0", label="train")
    ax_acc.plot(epoch, val, marker=".", color="C1", label="val (nearest centroid)")
    ax_acc.fill_between(epoch, val - ci, val + ci, color="C1", alpha=0.25, linewidth=0)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy (val: mean ± 95% CI)")
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    return fig
