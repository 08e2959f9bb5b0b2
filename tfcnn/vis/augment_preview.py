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
    """(images [n * (1 + draws), H, W, C] uint8, captions): per row one training image, then its draws.

    Box and mask labels are drawn into the images (boxes as outlines, masks as a colour wash),
    from the augmenter that moves them with the pixels (:mod:`tfcnn.data.box_augment`), so the
    grid shows whether a label follows its image, not only the pixels.
    """
    if not active(cfg.augment):
        raise ConfigError("data.augment switches no augmentation on, so there is nothing to preview; set e.g. data.augment.flip = true")
    x, y = bundle.arrays["train"]
    if not len(y):
        raise ConfigError("the training split is empty; check data.source and data.train_subset")
    kind = bundle.info.label_kind
    if kind == "classes":
        return _class_samples(cfg, bundle, x, y, n, draws)
    return _labelled_samples(cfg, bundle, x[:n], y[:n], kind, draws)


def _class_samples(cfg: DataConfig, bundle: DataBundle, x: np.ndarray, y: np.ndarray, n: int, draws: int):
    import tensorflow as tf

    idx = preview_indices(y, n)
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


def _labelled_samples(cfg: DataConfig, bundle: DataBundle, x: np.ndarray, y: np.ndarray, kind: str, draws: int):
    import tensorflow as tf

    from tfcnn.data.box_augment import augment_labelled_dataset, build_box_augmenter

    info = bundle.info
    augment = build_box_augmenter(cfg.augment, kind, fill=info.mean, channels=info.input_shape[-1])
    if augment is None:
        raise ConfigError(f"data.augment switches on nothing that {kind} labels train with; set e.g. data.augment.flip = true")
    y = y.astype(np.uint8 if kind == "masks" else np.float32)
    ds = augment_labelled_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(len(y)), augment, cfg.seed)
    drawn = [next(iter(ds)) for _ in range(draws)]
    paint = paint_masks if kind == "masks" else paint_boxes
    colours = _palette(info.num_classes + 1)  # mask ids index it; box class c is colour 1 + c
    images, captions = [], []
    for i in range(len(y)):
        images.append(paint(x[i], y[i], colours))
        captions.append(f"#{i} (original)")
        for d, (images_d, labels_d) in enumerate(drawn, 1):
            images.append(paint(images_d[i].numpy(), labels_d[i].numpy(), colours))
            captions.append(f"#{i} draw {d}")
    return np.stack(images), captions


def _palette(k: int) -> np.ndarray:
    """The segmentation report's colours (:func:`tfcnn.vis.segmentation.palette`) as uint8."""
    from tfcnn.vis.segmentation import palette

    return (palette(k) * 255).round().astype(np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.uint8)
    return np.repeat(image, 3, -1) if image.shape[-1] == 1 else image.copy()


def paint_masks(image: np.ndarray, mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """The image in RGB with every labelled pixel (class id > 0) washed 55% in its class colour."""
    rgb = _rgb(image)
    mask = np.asarray(mask).astype(np.int64)
    washed = (0.45 * rgb + 0.55 * colours[np.clip(mask, 0, len(colours) - 1)]).round().astype(np.uint8)
    return np.where(mask[..., None] > 0, washed, rgb)


def paint_boxes(image: np.ndarray, boxes: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """The image in RGB with each labelled box (rows ymin, xmin, ymax, xmax, class; PAD rows
    skipped) outlined one pixel wide in its class colour, on its outermost pixels whose centres
    lie inside the box (so a flip of the image mirrors the outline exactly)."""
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    for row in np.asarray(boxes, np.float64).reshape(-1, 5):
        if row[4] < 0:
            continue
        top, left = (int(np.clip(round(v * n), 0, n - 1)) for v, n in ((row[0], h), (row[1], w)))  # first pixel centre inside
        bottom, right = (int(np.clip(round(v * n) - 1, 0, n - 1)) for v, n in ((row[2], h), (row[3], w)))  # last one
        bottom, right = max(bottom, top), max(right, left)
        colour = colours[1 + int(row[4]) % (len(colours) - 1)]
        rgb[top, left:right + 1] = rgb[bottom, left:right + 1] = colour
        rgb[top:bottom + 1, left] = rgb[top:bottom + 1, right] = colour
    return rgb


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
