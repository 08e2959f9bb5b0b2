"""Checks and conversions every in-memory source goes through before it becomes a DataBundle.

One place decides what a valid data set is (uint8 NHWC images with 1 or 3 channels, integer
labels in [0, classes), at least two classes) so the IDX, TFDS, folder and numpy sources cannot
drift apart, and one place applies ``data.image_size`` / ``data.channels`` with the same
resize and colour maths as :mod:`tfcnn.data.images`.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import keras
import numpy as np

from tfcnn.data.images import RESIZE_METHOD, conform_image, to_channels
from tfcnn.errors import DataError
from tfcnn.util import log


def as_nhwc(x: np.ndarray, where: str) -> np.ndarray:
    """uint8 NHWC view of NHW / NHWC images; any other dtype or rank is a DataError naming `where`."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        hint = " (for 0-1 floats use (x * 255).round().astype(np.uint8))" if x.dtype.kind == "f" else ""
        raise DataError(f"{where} has dtype {x.dtype}; images must be uint8 pixel values 0-255{hint}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(
            f"{where} has shape {tuple(x.shape)}; expected (N, H, W) grey or (N, H, W, C) with C = 1 or 3"
        )
    if min(x.shape[1:3]) < 1:
        raise DataError(f"{where} has shape {tuple(x.shape)}; images must be at least 1x1")
    return x


def as_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """int32 (N,) labels; (N, 1) is flattened, non-integers and length mismatches are DataErrors."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where} has shape {tuple(y.shape)}; labels must be one integer class id per image (N,)")
    if y.dtype.kind not in "iu":
        raise DataError(f"{where} has dtype {y.dtype}; labels must be integer class ids 0..classes-1")
    if len(y) != n:
        raise DataError(f"{where} has {len(y)} labels for {n} images; they must match one to one")
    return y.astype(np.int32)


def check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    """Every label in [0, num_classes), else one DataError naming the worst offender."""
    if len(y) == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise DataError(
            f"{where} contains label {bad}, outside [0, {num_classes}) for {num_classes} classes; "
            "fix the labels or give the full list of class names"
        )


def check_classes(class_names: Sequence[str], y_train: np.ndarray, where: str) -> None:
    """A classifier needs at least two classes, and training images of every class it names.

    A named class without a training image would be an output the model was never taught, and
    its per-class test numbers would be meaningless, so it is an error rather than a quiet gap.
    """
    if len(class_names) < 2:
        raise DataError(f"{where} has {len(class_names)} class(es) {list(class_names)}; a classifier needs at least 2")
    present = np.unique(y_train)
    if len(present) < 2:
        raise DataError(
            f"{where}: every training image is in one class ({class_names[int(present[0])]!r}); "
            "a classifier needs images of at least 2 classes"
            if len(present)
            else f"{where}: there are no training images; add images for at least 2 classes"
        )
    missing = sorted(set(range(len(class_names))) - {int(v) for v in present})
    if missing:
        names = ", ".join(f"{class_names[i]!r} (id {i})" for i in missing[:5])
        raise DataError(
            f"{where}: {len(missing)} of {len(class_names)} classes have no training images: {names}; "
            "add images for them or remove them from the class names"
        )


def most_common_size(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The most frequent (height, width); ties go to the larger area, then the taller, so it is stable."""
    counts = Counter(tuple(int(v) for v in s) for s in sizes)
    return max(counts, key=lambda s: (counts[s], s[0] * s[1], s[0], s[1]))


def conform(
    x: np.ndarray, size: Sequence[int] | None, channels: int | None, *, label: str = "images"
) -> np.ndarray:
    """Apply data.image_size (bilinear, as for image files) and data.channels to a uint8 NHWC batch."""
    target = tuple(int(v) for v in size) if size is not None else None
    if target is not None and tuple(x.shape[1:3]) != target:
        out = np.empty((len(x), *target, x.shape[-1]), dtype=np.uint8)
        bar = Progress(len(x), f"resizing {len(x)} {label} to {target[0]}x{target[1]} ({RESIZE_METHOD})")
        for i, img in enumerate(x):
            out[i] = conform_image(img, target, x.shape[-1])
            bar.step(i + 1)
        x = out
    if channels is not None:
        x = to_channels(x, channels)
    return x


class Progress:
    """A keras Progbar for long per-item loops, updated about 10 times; silent below `threshold`."""

    def __init__(self, total: int, title: str, threshold: int = 5000, unit: str = "image"):
        self.total = total
        self.every = max(1, total // 10)
        self.bar = None
        if total >= threshold:
            log.info("data: %s", title)
            self.bar = keras.utils.Progbar(total, unit_name=unit)

    def step(self, done: int) -> None:
        if self.bar is not None and (done % self.every == 0 or done == self.total):
            self.bar.update(done)
