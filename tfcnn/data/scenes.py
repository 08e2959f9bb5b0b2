"""Generated detection / segmentation scenes: ``fashion_scenes`` and ``shapes`` (``data.scenes``).

Why generate: a detector needs images with several objects, boxes and masks, and this project
must build and test offline in seconds. Pasting Fashion-MNIST items onto textured noise gives a
real-looking, hard-enough task from files that are already on the machine (the Debian package),
and ``shapes`` (circles, squares, triangles drawn with Pillow) gives a tiny one for fast tests.

Everything is numpy + Pillow with one seeded ``np.random.default_rng`` per split, so the same
``ScenesConfig`` and seed give byte-identical images, boxes and masks on every machine.

How a scene is built (both generators):

* the canvas is ``size`` x ``size`` single-channel textured noise: coarse noise on an
  ``size // 8`` grid, bilinearly upsampled, plus a little per-pixel grain, spanning
  ``0 .. background * 255`` (a flat background would make "not black" a perfect detector);
* ``n = integers(min_objects, max_objects + 1)`` objects are placed one after another, each
  scaled by a factor drawn uniformly from ``[min_scale, max_scale]`` (Fashion-MNIST: of its
  28 px side, bilinear; shapes: of :data:`SHAPE_BASE` px) and put at a uniformly random place
  where it fits entirely;
* an object's *ink* is where its scaled intensity exceeds :data:`INK_THRESHOLD` (of 255); its
  box is the tight pixel-exact box of that ink (``ymin = first ink row / size``,
  ``ymax = (last ink row + 1) / size``), so a sandal's box hugs the sandal, not its 28x28 frame;
* a placement whose box has IoU > ``max_iou`` with an already placed box is rejected and
  redrawn (new position, same item and scale) up to :data:`MAX_TRIES` times; after that the
  object is dropped, so a crowded scene may hold fewer than ``n`` objects (never fewer than 0);
* compositing is alpha by ink: ink pixels replace the canvas, fainter pixels blend in
  proportionally (``alpha = min(1, value / INK_THRESHOLD)``), so items show over the texture;
* the mask is painted in placement order (later items occlude earlier ones) with the class id
  + 1 where the item's ink is; boxes stay amodal (the whole item), as COCO boxes are.

Train scenes use only the Fashion-MNIST *train* items and test scenes only the *test* items;
:class:`Scenes` records which item each object came from, so that can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from tfcnn.config import ScenesConfig
from tfcnn.data.boxes import PAD, max_iou, pad_labels

INK_THRESHOLD = 32  # an item pixel with value > this (of 255) is ink: box, mask and full opacity
MAX_TRIES = 20  # placements tried per object before it is dropped (IoU limit not met)
SHAPE_BASE = 20  # shapes: pixels of side at scale 1.0 (Fashion-MNIST items: their own 28)
SHAPE_CLASSES = ["circle", "square", "triangle"]
_SPLIT_SALT = {"train": 0, "test": 1}  # the two splits draw from independent streams

# (rng) -> (patch uint8 [h, w], class id, item id or -1)
ItemDraw = Callable[[np.random.Generator, float], tuple[np.ndarray, int, int]]


@dataclass
class Scenes:
    """One split of generated scenes.

    images uint8 [N, S, S]; boxes float32 [N, M, 5] (rows ymin, xmin, ymax, xmax, class id;
    PAD rows -1 last); masks uint8 [N, S, S] (0 background, class id + 1); items int32 [N, M]
    (source item index per box row, -1 for PAD rows and for generators without items).
    """

    images: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    items: np.ndarray

    def mask_labels(self, mode: str) -> np.ndarray:
        """Masks as ``data.scenes.mask_classes`` wants them: "classes" (0, id + 1) or "foreground" (0/1)."""
        return self.masks if mode == "classes" else (self.masks > 0).astype(np.uint8)


def background(size: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """float32 [size, size] textured noise in ``0 .. amplitude * 255`` (see the module docstring)."""
    top = float(amplitude) * 255.0
    if top <= 0:
        return np.zeros((size, size), np.float32)
    grid = max(2, size // 8)
    coarse = rng.random((grid, grid), dtype=np.float32)
    smooth = np.asarray(
        Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR), np.float32
    )
    grain = rng.random((size, size), dtype=np.float32)
    return (0.8 * smooth + 0.2 * grain) * top


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel box (row0, col0, row1, col1), end-exclusive, of a boolean mask's True pixels; None if none."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def render(
    n: int, draw: ItemDraw, cfg: ScenesConfig, rng: np.random.Generator, max_objects: int,
    objects: tuple[int, int] | None = None,
) -> Scenes:
    """`n` scenes whose objects come from `draw(rng, scale)`; see the module docstring.
    `objects` is the (min, max) count per scene (default the config's test range)."""
    size = cfg.size
    images = np.empty((n, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    labels = np.full((n, max_objects, 5), PAD, np.float32)
    items = np.full((n, max_objects), -1, np.int32)
    lo, hi = objects or (cfg.min_objects, cfg.max_objects)
    hi = min(hi, max_objects)
    lo = min(lo, hi)
    for i in range(n):
        canvas = background(size, cfg.background, rng)
        mask = masks[i]
        boxes: list[tuple[float, float, float, float]] = []
        classes: list[int] = []
        for _ in range(int(rng.integers(lo, hi + 1))):
            scale = float(rng.uniform(cfg.min_scale, cfg.max_scale))
            patch, cls, item = draw(rng, scale)
            patch = patch[:size, :size]  # an item larger than the canvas is cropped to it
            ink = patch > INK_THRESHOLD
            tb = tight_box(ink)
            if tb is None:
                continue
            h, w = patch.shape
            for _try in range(MAX_TRIES):
                y0 = int(rng.integers(0, size - h + 1))
                x0 = int(rng.integers(0, size - w + 1))
                box = ((y0 + tb[0]) / size, (x0 + tb[1]) / size, (y0 + tb[2]) / size, (x0 + tb[3]) / size)
                if max_iou(box, boxes) <= cfg.max_iou:
                    break
            else:
                continue  # no acceptable place: this object is dropped
            value = patch.astype(np.float32)
            alpha = np.minimum(value / INK_THRESHOLD, 1.0)
            region = canvas[y0 : y0 + h, x0 : x0 + w]
            region[...] = alpha * value + (1.0 - alpha) * region
            mask[y0 : y0 + h, x0 : x0 + w][ink] = cls + 1
            items[i, len(boxes)] = item
            boxes.append(box)
            classes.append(cls)
        images[i] = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
        labels[i] = pad_labels(np.array(boxes, np.float32).reshape(-1, 4), np.array(classes), max_objects)
    return Scenes(images, labels, masks, items)


def _seed(cfg: ScenesConfig, data_seed: int, split: str) -> np.random.Generator:
    base = cfg.seed if cfg.seed is not None else data_seed
    return np.random.default_rng([int(base), _SPLIT_SALT[split]])


def fashion_draw(x: np.ndarray, y: np.ndarray) -> ItemDraw:
    """Draw a random item of (x uint8 [N, 28, 28], y class ids), scaled bilinearly."""

    def draw(rng: np.random.Generator, scale: float) -> tuple[np.ndarray, int, int]:
        k = int(rng.integers(len(x)))
        item = x[k]
        side_h = max(1, round(item.shape[0] * scale))
        side_w = max(1, round(item.shape[1] * scale))
        patch = np.asarray(Image.fromarray(item).resize((side_w, side_h), Image.Resampling.BILINEAR), np.uint8)
        return patch, int(y[k]), k

    return draw


def fashion_scenes(
    cfg: ScenesConfig,
    data_seed: int,
    train_items: tuple[np.ndarray, np.ndarray],
    test_items: tuple[np.ndarray, np.ndarray],
    max_objects: int | None = None,
) -> tuple[Scenes, Scenes]:
    """(train, test) scenes: ``cfg.num_train`` from `train_items`, ``cfg.num_test`` from `test_items`
    (each ``(x uint8 [N, 28, 28], y int [N])``); `max_objects` (default ``cfg.most_objects()``) is M.
    Train scenes hold ``cfg.train_range()`` objects each, test scenes ``min_objects..max_objects``."""
    m = max_objects or cfg.most_objects()
    train = render(cfg.num_train, fashion_draw(*train_items), cfg, _seed(cfg, data_seed, "train"), m, cfg.train_range())
    test = render(cfg.num_test, fashion_draw(*test_items), cfg, _seed(cfg, data_seed, "test"), m)
    return train, test


def load_fashion_items(path: str | None = None) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST (train, test) items from local IDX files, found as the ``fashion_mnist`` source finds them."""
    from tfcnn.data import builtin, idx

    def from_tfds(name: str) -> dict:
        from tfcnn.data import tfds_source  # TensorFlow only when the IDX files are missing

        return tfds_source.load_tfds(name)

    kind, found = builtin.locate("fashion_mnist", path, from_tfds)
    if kind == "idx":
        return idx.load_idx_dir(Path(found))  # type: ignore[arg-type]
    d = dict(found)  # type: ignore[call-overload]
    (xtr, ytr), (xte, yte) = d["train"], d["test"]
    return (xtr.reshape(-1, 28, 28), ytr), (xte.reshape(-1, 28, 28), yte)


def shape_patch(cls: int, side: int, value: int) -> np.ndarray:
    """A `side` x `side` uint8 patch holding one filled shape of class `cls` at intensity `value`."""
    img = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(img)
    e = side - 1
    if cls == 0:
        d.ellipse((0, 0, e, e), fill=value)
    elif cls == 1:
        d.rectangle((0, 0, e, e), fill=value)
    else:
        d.polygon([(e / 2, 0), (e, e), (0, e)], fill=value)
    return np.asarray(img, np.uint8)


def shapes_draw(rng: np.random.Generator, scale: float) -> tuple[np.ndarray, int, int]:
    """A random circle / square / triangle of side ``round(SHAPE_BASE * scale)``, intensity 128..255."""
    cls = int(rng.integers(len(SHAPE_CLASSES)))
    side = max(2, round(SHAPE_BASE * scale))
    return shape_patch(cls, side, int(rng.integers(128, 256))), cls, -1


def shapes_scenes(cfg: ScenesConfig, data_seed: int, max_objects: int | None = None) -> tuple[Scenes, Scenes]:
    """(train, test) shape scenes, ``cfg.num_train`` and ``cfg.num_test`` of them."""
    m = max_objects or cfg.most_objects()
    train = render(cfg.num_train, shapes_draw, cfg, _seed(cfg, data_seed, "train"), m, cfg.train_range())
    test = render(cfg.num_test, shapes_draw, cfg, _seed(cfg, data_seed, "test"), m)
    return train, test
