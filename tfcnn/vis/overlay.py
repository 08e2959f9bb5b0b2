"""Small matplotlib helpers for the explanation PNGs: heatmap overlays and tile grids.

Figures are built with the object-oriented API (``matplotlib.figure.Figure``, no pyplot), so no
global backend or figure registry is touched and nothing needs closing. Every PNG records its
title and its panel titles as PNG text chunks ("Title", "Description" as a JSON list): tests and
scripts can check what a figure says without OCR.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure


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


def panel_titles(fig: Figure) -> list[str]:
    """The non-empty axes titles of a figure, in drawing order."""
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Render to PNG (titles in the text chunks) and move into place atomically."""
    title = fig.get_suptitle()
    meta = {"Title": title, "Description": json.dumps(panel_titles(fig)), "Software": None}
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata=meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def heatmap_figure(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    map_titles: Sequence[str],
    *,
    input_title: str,
    suptitle: str,
    alpha: float = 0.5,
) -> Figure:
    """The input on the left, then each [0, 1] map drawn over a copy of it with the jet colormap."""
    n = 1 + len(maps)
    fig = Figure(figsize=(2.6 * n, 3.0))
    axes = fig.subplots(1, n, squeeze=False)[0]
    shown, cmap = display_image(image)
    axes[0].imshow(shown, cmap=cmap, vmin=0, vmax=255)
    axes[0].set_title(input_title, fontsize=9)
    for ax, m, title in zip(axes[1:], maps, map_titles):
        ax.imshow(shown, cmap=cmap, vmin=0, vmax=255)
        im = ax.imshow(np.asarray(m, dtype=np.float32), cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    if maps:
        fig.colorbar(im, ax=list(axes), fraction=0.02, pad=0.02)
    fig.suptitle(suptitle, fontsize=10)
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


def unit_range(a: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] (a constant array becomes zeros) so tiles are comparable by shape, not scale."""
    a = np.asarray(a, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
