"""Small matplotlib figures saved next to the tables they illustrate (PNG, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from yollava.storage import atomic_path


def plot_training_history(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss and recognition accuracies per epoch (the best epoch marked), written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
    loss_ax.plot(epochs, [h["loss"] for h in history], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="training loss (answer tokens)", title="loss")
    for key, label in (("weighted", "weighted"), ("positive", "positives"), ("negative", "negatives")):
        acc_ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
    best = max(history, key=lambda h: h["weighted"])
    acc_ax.axvline(best["epoch"], color="grey", linestyle=":", label=f"best epoch {best['epoch']}")
    acc_ax.set(xlabel="epoch", ylabel="recognition accuracy (training photos)", ylim=(-0.02, 1.02), title="recognition")
    acc_ax.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for axis in (loss_ax, acc_ax):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
