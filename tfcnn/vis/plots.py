"""The one figure toolkit of tfcnn: every PNG the figures, the report and `tfcnn explain` make.

Figures are built with matplotlib's object-oriented API (``matplotlib.figure.Figure``, no
pyplot), so no global backend or figure registry is touched, nothing needs closing, and it
works on servers and in CI without a display. Every PNG records its title and its panel titles
as PNG text chunks ("Title", "Description" as a JSON list), so tests and scripts can check what a
figure says without OCR; matplotlib's "Software" chunk (which carries a URL) is dropped,
because the report must not carry any URL, not even inside an image. Files are written through
:func:`tfcnn.util.atomic_path`, so a report built while figures are being drawn never embeds
half a PNG.
"""

from __future__ import annotations

import io
import json
import math
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tfcnn.evaluate.training import histogram_quantiles
from tfcnn.util import write_bytes


def colormap(name: str):
    return matplotlib.colormaps[name]


# --------------------------------------------------------------------------- saving


def panel_titles(fig: Figure) -> list[str]:
    """The non-empty axes titles of a figure, in drawing order."""
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes, its titles in the text chunks (for the report's data URIs)."""
    meta = {"Title": fig.get_suptitle(), "Description": json.dumps(panel_titles(fig)), "Software": None}
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata=meta)
    return buf.getvalue()


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Render to PNG and move it into place atomically (files 0644, see tfcnn.util)."""
    return write_bytes(Path(path), figure_png(fig, dpi))


# --------------------------------------------------------------------------- images


def _short(name: str, n: int = 14) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def display_image(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """HWC pixels -> what imshow draws faithfully: grayscale squeezed with a gray colormap, RGB as uint8."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[-1] == 1:
        return img[..., 0], "gray"
    if img.ndim == 3 and img.shape[-1] != 3:
        return img.mean(axis=-1).astype(np.uint8), "gray"
    return img, None


def unit_range(a: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] (a constant array becomes zeros) so tiles are comparable by shape, not scale."""
    a = np.asarray(a, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def image_grid_figure(images: np.ndarray, titles: Sequence[str], suptitle: str, cols: int = 8) -> Figure:
    """A gallery of test images with one caption each ("true / predicted")."""
    n = len(images)
    cols = max(1, min(cols, n))
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(1.8 * cols, 2.0 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles):
        shown, cmap = display_image(img)
        ax.imshow(shown, cmap=cmap, vmin=0, vmax=255)
        ax.set_title(title, fontsize=8)
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def grid_figure(
    tiles: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    suptitle: str,
    cmap: str | None = "viridis",
    max_cols: int = 8,
) -> Figure:
    """Tiles (HxW or HxWx3 in [0, 1], or uint8 images) on a near-square grid, each with its own title."""
    n = len(tiles)
    cols = max(1, min(max_cols, math.ceil(math.sqrt(n))))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(1.6 * cols + 0.4, 1.7 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, tile, title in zip(axes, tiles, titles):
        tile = np.asarray(tile)
        if tile.dtype == np.uint8:
            shown, tile_cmap = display_image(tile)
            ax.imshow(shown, cmap=tile_cmap, vmin=0, vmax=255)
        elif tile.ndim == 3 and tile.shape[-1] == 3:
            ax.imshow(np.clip(tile, 0.0, 1.0))
        else:
            ax.imshow(np.squeeze(tile), cmap=cmap, vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=8)
    fig.suptitle(suptitle, fontsize=10)
    return fig


# --------------------------------------------------------------------------- heat maps


def text_panel(ax, text: str, width: int = 24) -> None:
    """An empty panel that says why there is no picture (instead of drawing a flat, misleading image)."""
    wrapped = "\n".join(textwrap.fill(part, width) for part in text.split("\n"))
    ax.text(0.5, 0.5, wrapped, ha="center", va="center", fontsize=8, color="#8a5a00", wrap=True,
            transform=ax.transAxes, bbox={"boxstyle": "round", "facecolor": "#fff7e0", "edgecolor": "#e0a800"})


def heatmap_figure(
    image: np.ndarray,
    maps: Sequence[np.ndarray | None],
    map_titles: Sequence[str],
    *,
    input_title: str,
    suptitle: str,
    alpha: float = 0.5,
    missing: str = "not available",
) -> Figure:
    """The input on the left, then each [0, 1] map drawn over a copy of it with the jet colormap.

    A map given as None (constant: nothing to show) becomes a text panel saying `missing`.
    """
    n = 1 + len(maps)
    fig = Figure(figsize=(2.6 * n, 3.0))
    axes = fig.subplots(1, n, squeeze=False)[0]
    shown, cmap = display_image(image)
    axes[0].imshow(shown, cmap=cmap, vmin=0, vmax=255)
    axes[0].set_title(input_title, fontsize=9)
    im = None
    for ax, m, title in zip(axes[1:], maps, map_titles):
        if m is None:
            text_panel(ax, missing)
        else:
            ax.imshow(shown, cmap=cmap, vmin=0, vmax=255)
            im = ax.imshow(np.asarray(m, dtype=np.float32), cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=list(axes), fraction=0.02, pad=0.02)
    fig.suptitle(suptitle, fontsize=10)
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
    heat = colormap("jet")(np.clip(cam, 0.0, 1.0))[..., :3]
    return np.clip(0.55 * img + 0.45 * heat, 0.0, 1.0)


def cam_rows_figure(rows: Sequence[dict], suptitle: str, max_panels: int = 8) -> Figure:
    """Image + one Grad-CAM overlay per explained class, several examples side by side per line.

    Each row is {"image": HWC uint8, "title": str, "cams": [(caption, HxW cam), ...]}; a cam of
    None (a constant map) becomes a "not available" text panel, never a flat overlay.
    """
    width = 1 + max(len(r["cams"]) for r in rows)  # panels per example
    per_line = max(1, max_panels // width)
    lines = int(np.ceil(len(rows) / per_line))
    cols = width * min(per_line, len(rows))
    fig = Figure(figsize=(1.9 * cols, 2.2 * lines + 0.5))
    axes = fig.subplots(lines, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, row in enumerate(rows):
        line, start = divmod(k, per_line)
        c0 = start * width
        shown, cmap = display_image(row["image"])
        axes[line, c0].imshow(shown, cmap=cmap, vmin=0, vmax=255)
        axes[line, c0].set_title(row["title"], fontsize=8)
        for c, (caption, cam) in enumerate(row["cams"], start=1):
            if cam is None:
                text_panel(axes[line, c0 + c], "not available:\nconstant map", width=14)
            else:
                axes[line, c0 + c].imshow(cam_overlay(row["image"], cam))
            axes[line, c0 + c].set_title(caption, fontsize=8)
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- evaluation figures


def confusion_matrix_figure(cm: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Counts in every cell and row-normalised colour, so rare classes' errors still show up."""
    cm = np.asarray(cm)
    k = len(class_names)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    size = max(4.0, 0.55 * k + 2.5)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
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


def reliability_figure(bins: dict, ece: float, title: str = "Reliability diagram") -> Figure:
    """Reliability diagram: accuracy vs confidence per bin, with the bin's share of samples below."""
    edges = np.asarray(bins["edges"], dtype=float)
    acc = np.asarray(bins["accuracy"], dtype=float)
    conf = np.asarray(bins["confidence"], dtype=float)
    count = np.asarray(bins["count"], dtype=float)
    centers = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    filled = count > 0
    fig = Figure(figsize=(5.2, 6))
    ax, ax_hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.bar(centers[filled], acc[filled], width=width[filled], edgecolor="black", alpha=0.75, label="accuracy")
    gap_lo = np.minimum(acc, conf)[filled]
    ax.bar(centers[filled], np.abs(conf - acc)[filled], bottom=gap_lo, width=width[filled],
           facecolor="none", edgecolor="red", lw=0.8, hatch="//", label="gap to confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} (ECE = {ece:.4f})")
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
    cmap = colormap("tab10" if k <= 10 else "tab20")
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
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


# --------------------------------------------------------------------------- training figures


def learning_curves_figure(
    history: dict[str, np.ndarray], best_epoch: int | None = None, stopped_epoch: int | None = None
) -> Figure:
    """Train vs validation loss and accuracy (plus the learning rate), best/stop epochs marked."""
    epochs = history["epoch"]
    panels = [("loss", "Loss"), ("accuracy", "Accuracy")]
    if "lr" in history:
        panels.append(("lr", "Learning rate"))
    fig = Figure(figsize=(5 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)
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
    fig = Figure(figsize=(12, 4.2))
    ax_lines, ax_last = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    cmap = colormap("viridis")
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
    n = len(series)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(3.6 * cols, 2.6 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
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
