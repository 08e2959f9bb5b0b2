"""The LR range test's figure: loss against learning rate (log scale), with the suggestion marked."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from tfcnn.run import LRFind, Run
from tfcnn.vis.plots import save_figure

FILE = "lr_find.png"  # in the run's plots directory


def plot_lr_find(run: Run, record: LRFind | None = None) -> Path:
    """Draw ``record`` (default: the run's lr_find.json) into plots/lr_find.png; returns the path."""
    rec = record or run.read(LRFind)
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    pts = [(lr, v) for lr, v in zip(rec.lr, rec.loss) if v is not None]
    sm = [(lr, v) for lr, v in zip(rec.lr, rec.smoothed) if v is not None]
    ax.plot(*zip(*pts), color="#9aa5b1", lw=0.8, label="loss per step")
    ax.plot(*zip(*sm), color="#24508f", lw=2, label="smoothed")
    if rec.suggested_lr is not None:
        ax.axvline(rec.suggested_lr, color="#13793b", ls="--", label=f"suggested {rec.suggested_lr:.2e}")
    if rec.min_loss_lr is not None:
        ax.axvline(rec.min_loss_lr, color="#b3261e", ls=":", label=f"minimum {rec.min_loss_lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    values = [v for _, v in sm]
    ax.set_ylim(min(v for _, v in pts) * 0.95, min(max(values), 3 * values[0]) * 1.05)
    ax.set_title(f"LR range test: {rec.model}, {rec.optimizer}, batch {rec.batch_size} ({rec.stopped} after {len(rec.lr)} steps)")
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, run.dir("plots") / FILE)
