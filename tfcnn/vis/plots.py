"""Matplotlib figures for the evaluation stage and the run report.

Everything renders with the Agg backend (no display on servers or in CI) and is written
atomically, so a report built while evaluation is still running never embeds half a PNG.
PNG metadata is stripped: the report must not carry any URL, not even inside an image.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

_PNG_META = {"Software": None}


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render and close a figure; closing matters because evaluation makes a dozen of them."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata=_PNG_META)
    finally:
        plt.close(fig)
    return buf.getvalue()


def write_bytes(path: Path, data: bytes) -> Path:
    """Atomic binary write (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; plots are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> Path:
    return write_bytes(path, figure_png(fig, dpi))


def _short(name: str, n: int = 14) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def display_image(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """HWC uint8 -> something imshow draws faithfully (grayscale squeezed, with a gray colormap)."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 1:
        return img[..., 0], "gray"
    return img, None


def confusion_matrix_figure(cm: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Counts in every cell and row-normalised colour, so rare classes' errors still show up."""
    cm = np.asarray(cm)
    k = len(class_names)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    size = max(4.0, 0.55 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    labels = [_short(c) for c in class_names]
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test split)")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if frac[i, j] > 0.5 else "black")
    return fig


def image_grid_figure(images: np.ndarray, titles: Sequence[str], suptitle: str, cols: int = 8) -> Figure:
    """A gallery of test images with one caption each ("true / predicted")."""
    n = len(images)
    cols = max(1, min(cols, n))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 2.0 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles):
        shown, cmap = display_image(img)
        ax.imshow(shown, cmap=cmap, vmin=0, vmax=255)
        ax.set_title(title, fontsize=8)
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def learning_curves_figure(
    history: dict[str, np.ndarray], best_epoch: int | None = None, stopped_epoch: int | None = None
) -> Figure:
    """Train vs validation loss and accuracy (plus the learning rate), best/stop epochs marked."""
    epochs = history["epoch"]
    panels = [("loss", "Loss"), ("accuracy", "Accuracy")]
    if "lr" in history:
        panels.append(("lr", "Learning rate"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        if key in history:
            ax.plot(epochs, history[key], "o-", label="train" if key != "lr" else "lr", ms=3)
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "s-", label="validation", ms=3)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="green", ls="--", lw=1, label=f"best epoch {best_epoch}")
        if stopped_epoch is not None and stopped_epoch != best_epoch:
            ax.axvline(stopped_epoch, color="red", ls=":", lw=1, label=f"stopped at {stopped_epoch}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key == "lr" and np.all(np.asarray(history[key]) > 0):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def gradient_norms_figure(epochs: Sequence[int], norms: dict[str, Sequence[float]]) -> Figure:
    """Per-layer gradient L2 norm per epoch on a log scale: vanishing layers sink, exploding ones climb.

    A "global" series (whole-model norm) is drawn as a thick black line and kept out of the
    per-layer bar chart, which shows the last epoch's gradient flow from input to output.
    """
    fig, (ax_lines, ax_last) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    cmap = plt.get_cmap("viridis")
    names = [n for n in norms if n != "global"]
    colors = [cmap(i / max(len(names) - 1, 1)) for i in range(len(names))]
    for name, color in zip(names, colors):
        ax_lines.plot(epochs, norms[name], "o-", ms=2, lw=1, color=color, label=name)
    if "global" in norms:
        ax_lines.plot(epochs, norms["global"], "k-", lw=2.2, label="global (whole model)")
    ax_lines.set_yscale("log")
    ax_lines.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_lines.set_xlabel("epoch")
    ax_lines.set_ylabel("mean gradient L2 norm")
    ax_lines.set_title("Gradient norm per layer (input side = dark)")
    ax_lines.grid(alpha=0.3)
    if len(names) <= 16:
        ax_lines.legend(fontsize=7, ncol=2)
    last = [float(norms[n][-1]) for n in names]
    ax_last.bar(range(len(names)), last, color=colors)
    ax_last.set_yscale("log")
    ax_last.set_xticks(range(len(names)), [_short(n, 18) for n in names], rotation=70, ha="right", fontsize=7)
    ax_last.set_title(f"Gradient flow, epoch {epochs[-1]} (input -> output)")
    fig.tight_layout()
    return fig


def weight_distribution_figure(series: dict[str, tuple[np.ndarray, list[np.ndarray]]]) -> Figure:
    """Per-layer weight quantiles over training (from TensorBoard histograms): median, 25-75 % and 5-95 % bands."""
    from tfcnn.evaluate.training import histogram_quantiles

    n = len(series)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows + 0.4), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (tag, (steps, hists)) in zip(axes.flat, series.items()):
        q = np.array([histogram_quantiles(h) for h in hists])  # [steps, 5]
        ax.fill_between(steps, q[:, 0], q[:, 4], alpha=0.2, color="C0", label="5-95 %")
        ax.fill_between(steps, q[:, 1], q[:, 3], alpha=0.4, color="C0", label="25-75 %")
        ax.plot(steps, q[:, 2], color="C0", lw=1.2, label="median")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_title(_short(tag.removesuffix("/histogram"), 28), fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Weight distributions over training (TensorBoard histograms; x = step)")
    fig.tight_layout()
    return fig


def reliability_figure(bins: dict, ece: float) -> Figure:
    """Reliability diagram: accuracy vs confidence per bin, with the bin's share of samples below."""
    edges = np.asarray(bins["edges"], dtype=float)
    acc = np.asarray(bins["accuracy"], dtype=float)
    conf = np.asarray(bins["confidence"], dtype=float)
    count = np.asarray(bins["count"], dtype=float)
    centers = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    filled = count > 0
    fig, (ax, ax_hist) = plt.subplots(
        2, 1, figsize=(5.2, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.bar(centers[filled], acc[filled], width=width[filled], edgecolor="black", alpha=0.75, label="accuracy")
    gap_lo = np.minimum(acc, conf)[filled]
    ax.bar(centers[filled], np.abs(conf - acc)[filled], bottom=gap_lo, width=width[filled],
           facecolor="none", edgecolor="red", lw=0.8, hatch="//", label="gap to confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability diagram (ECE = {ece:.4f})")
    ax.legend(fontsize=8, loc="upper left")
    total = max(count.sum(), 1.0)
    ax_hist.bar(centers, count / total, width=width, color="gray", edgecolor="black")
    ax_hist.set_xlabel("confidence (max softmax probability)")
    ax_hist.set_ylabel("share")
    fig.tight_layout()
    return fig


def embedding_figure(points: np.ndarray, labels: np.ndarray, class_names: Sequence[str], title: str,
                     wrong: np.ndarray | None = None) -> Figure:
    """2-D scatter coloured by true class; misclassified points ringed in black."""
    k = len(class_names)
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for c in range(k):
        sel = labels == c
        if sel.any():
            ax.scatter(points[sel, 0], points[sel, 1], s=9, alpha=0.7, color=cmap(c % cmap.N), label=_short(class_names[c]))
    if wrong is not None and wrong.any():
        ax.scatter(points[wrong, 0], points[wrong, 1], s=28, facecolors="none", edgecolors="black",
                   linewidths=0.8, label="misclassified")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def cam_overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Blend a [0, 1] heat map (jet) onto an image; both HxW, result RGB float in [0, 1]."""
    img = np.asarray(image, dtype=np.float32) / 255.0
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != img.shape[:2]:
        from PIL import Image

        cam = np.asarray(Image.fromarray(cam).resize((img.shape[1], img.shape[0]), Image.BILINEAR))
    heat = plt.get_cmap("jet")(np.clip(cam, 0.0, 1.0))[..., :3]
    return np.clip(0.55 * img + 0.45 * heat, 0.0, 1.0)


def cam_rows_figure(rows: Sequence[dict], suptitle: str, max_panels: int = 8) -> Figure:
    """Image + one Grad-CAM overlay per explained class, several examples side by side per line.

    Each row is {"image": HWC uint8, "title": str, "cams": [(caption, HxW cam), ...]}.
    """
    width = 1 + max(len(r["cams"]) for r in rows)  # panels per example
    per_line = max(1, max_panels // width)
    lines = int(np.ceil(len(rows) / per_line))
    cols = width * min(per_line, len(rows))
    fig, axes = plt.subplots(lines, cols, figsize=(1.9 * cols, 2.2 * lines + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, row in enumerate(rows):
        line, start = divmod(k, per_line)
        c0 = start * width
        shown, cmap = display_image(row["image"])
        axes[line, c0].imshow(shown, cmap=cmap, vmin=0, vmax=255)
        axes[line, c0].set_title(row["title"], fontsize=8)
        for c, (caption, cam) in enumerate(row["cams"], start=1):
            axes[line, c0 + c].imshow(cam_overlay(row["image"], cam))
            axes[line, c0 + c].set_title(caption, fontsize=8)
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
