"""What the model trains on: a grid of training images, each beside several augmented draws of it.

Augmentation bugs are silent (a rotation in the wrong unit, a crop that only ever takes the
centre, mixup partners that are always the same class): the loss still falls, only slower. One
look at the grid catches them. The draws come from the same ops, settings and seeding as the
training pipeline (:func:`tfcnn.data.augment.augment_dataset`), on a fixed batch of training
images (one per class in turn), so mixup / CutMix partners are the other images of the grid.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tfcnn.config import DataConfig
from tfcnn.data.augment import active, augment_dataset, build_augmenter, build_mixer
from tfcnn.data.bundle import DataBundle
from tfcnn.errors import ConfigError
from tfcnn.run import Run
from tfcnn.util import log
from tfcnn.vis import plots

PREVIEW_FILE = "augment_preview.png"  # in the run's plots directory


def preview_indices(labels: np.ndarray, n: int) -> np.ndarray:
    """n training indices taking the classes in turn (the first image of each, then the second, ...)."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    rank = np.empty(len(labels), np.int64)
    starts = np.searchsorted(labels[order], labels[order])
    rank[order] = np.arange(len(labels)) - starts  # position of each image within its class
    return np.lexsort((labels, rank))[:n]


def preview_samples(cfg: DataConfig, bundle: DataBundle, n: int = 8, draws: int = 5) -> tuple[np.ndarray, list[str]]:
    """(images [n * (1 + draws), H, W, C] uint8, captions): per row one training image, then its draws."""
    import tensorflow as tf

    if not active(cfg.augment):
        raise ConfigError("data.augment switches no augmentation on, so there is nothing to preview; set e.g. data.augment.flip = true")
    x, y = bundle.arrays["train"]
    idx = preview_indices(y, n)
    if not len(idx):
        raise ConfigError("the training split is empty; check data.source and data.train_subset")
    x, y = x[idx], y[idx].astype(np.int32)
    info = bundle.info
    augment = build_augmenter(cfg.augment, fill=info.mean, channels=info.input_shape[-1])
    mix = build_mixer(cfg.augment, info.num_classes)
    ds = augment_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(len(y)), augment, cfg.seed, mix)
    drawn = [next(iter(ds)) for _ in range(draws)]  # each iteration redraws the batch seed
    names = info.class_names
    images, captions = [], []
    for i in range(len(y)):
        images.append(x[i])
        captions.append(f"{names[y[i]]}\n(original)")
        for images_d, labels_d in drawn:
            images.append(images_d[i].numpy())
            captions.append(_caption(labels_d[i].numpy(), names))
    return np.stack(images), captions


def _caption(label: np.ndarray, names: list[str]) -> str:
    """The class of a plain label; the two largest shares of a mixed one ("Coat .62 + Bag .38")."""
    if label.ndim == 0:
        return names[int(label)]
    top = np.argsort(-label)[:2]
    if label[top[1]] < 1e-3:
        return names[int(top[0])]
    return f"{names[int(top[0])]} {label[top[0]]:.2f}\n+ {names[int(top[1])]} {label[top[1]]:.2f}"


def preview_figure(cfg: DataConfig, bundle: DataBundle, n: int = 8, draws: int = 5) -> Figure:
    images, captions = preview_samples(cfg, bundle, n, draws)
    lines = textwrap.wrap(f"training augmentation (data.seed {cfg.seed}): {settings_line(cfg.augment.summary())}", 24 * (1 + draws))
    fig = plots.image_grid_figure(images, captions, "\n".join(lines), cols=1 + draws)
    fig.suptitle("\n".join(lines), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.17 * len(lines) + 0.05) / fig.get_figheight()))  # room for the settings
    return fig


def settings_line(summary: dict) -> str:
    """``flip=True, erasing_area=[0.02, 0.333], ...`` with numbers to 3 significant digits."""

    def show(v) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(show(x) for x in v) + "]"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={show(v)}" for k, v in summary.items())


def write_preview(cfg: DataConfig, bundle: DataBundle, out: Path, n: int = 8, draws: int = 5) -> Path:
    """Draw the grid into ``out`` (PNG, written atomically); returns ``out``."""
    path = plots.save_figure(preview_figure(cfg, bundle, n, draws), Path(out))
    log.info(f"augment-preview: {n} training images x {draws} draws -> {path}")
    return path


def run_preview(run: Run) -> Path | None:
    """The run's plots/augment_preview.png, drawn from its config and data (the report's hook);
    None when the run trained without augmentation."""
    from tfcnn.data import bundle_for

    cfg = run.config().data
    if not active(cfg.augment):
        return None
    return write_preview(cfg, bundle_for(run), run.dir("plots") / PREVIEW_FILE)
