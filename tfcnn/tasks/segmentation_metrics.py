"""Segmentation metrics in numpy, from hard (argmax) masks: the confusion matrix and what it gives
(per-class IoU / Dice, their means, pixel accuracy), the boundary F-score, and the pixel agreement
of two models' masks (an export against its Keras model).

Why these:

* **Everything from one confusion matrix** ``cm[true, pred]`` (rows: true class, columns:
  predicted; counted with one ``np.bincount`` over ``true * C + pred``). It is additive over
  images, so a test split is counted in chunks and summed, and every region metric is exact.
* **IoU (Jaccard)** ``tp / (tp + fp + fn)`` and **Dice (F1)** ``2 tp / (2 tp + fp + fn)`` per
  class, the overlap measures of the segmentation literature (Dice as in V-Net's loss; Dice =
  2 IoU / (1 + IoU)). A class absent from both prediction and truth has no overlap to measure:
  its value is NaN and the means skip it (``np.nanmean``), as Keras' MeanIoU does. mean IoU
  averages every class, background included (the Keras metric the training history logs);
  mean Dice defaults to the foreground classes, the objects one cares about.
* **Pixel accuracy** is reported but misleads under imbalance: a 512x512 image with one
  100-pixel object predicted all background scores 99.96% while its foreground Dice is 0.
* **Boundary F1** (Csurka et al. 2013, "What is a good evaluation measure for semantic
  segmentation?"): region overlap hardly notices a blurred or shifted outline on large objects.
  Per class, the boundary pixels of the predicted and of the true region (pixels of the class
  with a 4-neighbour of another class; the image border is no boundary) are matched within
  ``tolerance_px`` (Euclidean, by dilating with a disc: exact for pixel centres, no scipy needed):
  precision = predicted boundary pixels near a true one, recall = the converse, summed over
  images, then F1 per class and the mean over the classes with any boundary.
* Non-finite input (a NaN mask from a broken export) is refused with a ValueError naming the
  image, instead of being cast to some integer class.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _as_masks(a: Any, what: str) -> np.ndarray:
    """`a` as an int64 ``[N, H, W]`` array (a single ``[H, W]`` mask becomes N = 1); a NaN or
    infinite value raises ValueError naming the (first) image holding one."""
    arr = np.asarray(a)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{what} masks must be [N, H, W] class ids, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr).reshape(len(arr), -1).all(axis=1)
        if bad.any():
            raise ValueError(
                f"{what} mask of image {int(np.argmax(bad))} has NaN or infinite values ({int(bad.sum())} image(s) in all)"
            )
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{what} masks must hold integer class ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _pair(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_masks(pred, "predicted"), _as_masks(true, "true")
    if p.shape != t.shape:
        raise ValueError(f"predicted and true masks differ in shape: {p.shape} vs {t.shape}")
    return p, t


def confusion(pred: Any, true: Any, num_classes: int) -> np.ndarray:
    """``[C, C]`` int64 counts, ``cm[t, p]`` = pixels of true class t predicted as p."""
    c = int(num_classes)
    if c < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    p, t = _pair(pred, true)
    for arr, what in ((p, "predicted"), (t, "true")):
        if arr.size and (arr.min() < 0 or arr.max() >= c):
            raise ValueError(f"{what} masks hold class ids {arr.min()}..{arr.max()}, outside 0..{c - 1}")
    return np.bincount((t * c + p).ravel(), minlength=c * c).reshape(c, c).astype(np.int64)


def _counts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix must be square [C, C], got shape {cm.shape}")
    tp = np.diag(cm)
    return tp, cm.sum(axis=0) - tp, cm.sum(axis=1) - tp  # tp, fp, fn


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """``[C]`` IoU ``tp / (tp + fp + fn)``; NaN for a class absent from prediction and truth."""
    tp, fp, fn = _counts(cm)
    return _ratio(tp, tp + fp + fn)


def per_class_dice(cm: np.ndarray) -> np.ndarray:
    """``[C]`` Dice ``2 tp / (2 tp + fp + fn)``; NaN for a class absent from prediction and truth."""
    tp, fp, fn = _counts(cm)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def mean_iou(cm: np.ndarray, foreground_only: bool = False) -> float:
    """Mean IoU over the classes present in prediction or truth (background too unless
    `foreground_only`); NaN if there is none."""
    iou = per_class_iou(cm)
    return _nanmean(iou[1:] if foreground_only else iou)


def mean_dice(cm: np.ndarray, foreground_only: bool = True) -> float:
    """Mean Dice over the present classes, by default only the foreground ones (1..C-1)."""
    dice = per_class_dice(cm)
    return _nanmean(dice[1:] if foreground_only else dice)


def pixel_accuracy(cm: np.ndarray) -> float:
    """Fraction of pixels whose class is right (NaN for an empty matrix)."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else math.nan


def pixel_agreement(a: Any, b: Any) -> float:
    """Fraction of pixels where two argmax masks (e.g. an export's and its Keras model's) agree."""
    x, y = _pair(a, b)
    return float((x == y).mean()) if x.size else math.nan


# --------------------------------------------------------------------------- boundary F-score


def boundaries(region: np.ndarray) -> np.ndarray:
    """Inner boundary of boolean regions ``[N, H, W]``: region pixels with a 4-neighbour outside
    it (the image border, replicated, is no boundary)."""
    padded = np.pad(region, ((0, 0), (1, 1), (1, 1)), mode="edge")
    interior = padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    return region & ~interior


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Boolean ``[N, H, W]`` dilated by a disc: True within Euclidean distance `radius` of a True pixel."""
    if radius <= 0:
        return mask.copy()
    n, h, w = mask.shape
    padded = np.pad(mask, ((0, 0), (radius, radius), (radius, radius)))
    out = np.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                out |= padded[:, radius + dy : radius + dy + h, radius + dx : radius + dx + w]
    return out


def boundary_f1_per_class(
    pred: Any, true: Any, tolerance_px: int = 2, num_classes: int | None = None
) -> np.ndarray:
    """``[C]`` boundary F1 per class (NaN where neither mask has a boundary of that class)."""
    if int(tolerance_px) < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    p, t = _pair(pred, true)
    c = int(num_classes) if num_classes is not None else int(max(p.max(initial=0), t.max(initial=0))) + 1
    out = np.full(c, np.nan)
    for k in range(c):
        bp, bt = boundaries(p == k), boundaries(t == k)
        n_p, n_t = int(bp.sum()), int(bt.sum())
        if n_p == 0 and n_t == 0:
            continue
        precision = (bp & dilate(bt, int(tolerance_px))).sum() / n_p if n_p else 0.0
        recall = (bt & dilate(bp, int(tolerance_px))).sum() / n_t if n_t else 0.0
        out[k] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return out


def boundary_f1(
    pred: Any, true: Any, tolerance_px: int = 2, *, num_classes: int | None = None, foreground_only: bool = True
) -> float:
    """Mean boundary F1 over the classes with a boundary (foreground ones by default); NaN if none."""
    f1 = boundary_f1_per_class(pred, true, tolerance_px, num_classes)
    return _nanmean(f1[1:] if foreground_only else f1)


__all__ = [
    "boundaries",
    "boundary_f1",
    "boundary_f1_per_class",
    "confusion",
    "dilate",
    "mean_dice",
    "mean_iou",
    "per_class_dice",
    "per_class_iou",
    "pixel_accuracy",
    "pixel_agreement",
]
