"""Box geometry shared by detection data, anchors, losses, metrics and export: one place, two backends.

Every box in tfcnn is ``(ymin, xmin, ymax, xmax)`` (TensorFlow's order, the one
``tf.image.non_max_suppression``, ``draw_bounding_boxes`` and the TFLite detection outputs use),
in *normalised* image coordinates (0..1 of height and width) unless a name says ``_px``. A box
label array is padded: ``float32 [M, 5]`` rows ``(ymin, xmin, ymax, xmax, class_id)`` per image,
unused rows all :data:`PAD` (class id -1), so a batch of images with different object counts is
one dense tensor that tf.data, ``tf.distribute`` and the Keras engines carry unchanged.

The numpy functions are the reference (metrics, scene generation, tests); the ``tf_`` ones run in
tf.data and inside exported graphs, so they use only ops TFLite has as builtins.
"""

from __future__ import annotations

import numpy as np

PAD = -1.0  # every field of an unused label row
LABEL_FIELDS = 5  # ymin, xmin, ymax, xmax, class id


# --------------------------------------------------------------------------- numpy


def area(boxes: np.ndarray) -> np.ndarray:
    """Area of ``[..., 4]`` boxes (0 for degenerate ones)."""
    b = np.asarray(boxes, np.float64)
    return np.maximum(b[..., 2] - b[..., 0], 0.0) * np.maximum(b[..., 3] - b[..., 1], 0.0)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU, ``[N, 4] x [M, 4] -> [N, M]`` (0 where the union is empty)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ymin = np.maximum(a[:, None, 0], b[None, :, 0])
    xmin = np.maximum(a[:, None, 1], b[None, :, 1])
    ymax = np.minimum(a[:, None, 2], b[None, :, 2])
    xmax = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.maximum(ymax - ymin, 0.0) * np.maximum(xmax - xmin, 0.0)
    union = area(a)[:, None] + area(b)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def max_iou(box: tuple[float, float, float, float], boxes: list[tuple[float, float, float, float]]) -> float:
    """The largest IoU of one box with any of `boxes` (0.0 for none), in plain Python floats.

    The scene generator asks this for every placement it tries (hundreds of thousands per
    pipeline run, against a handful of boxes): numpy's per-call overhead made :func:`iou` a
    third of the generation time. Same arithmetic, in the same order, as :func:`iou`, so the
    same IEEE doubles come out."""
    y0, x0, y1, x1 = box
    a_area = max(y1 - y0, 0.0) * max(x1 - x0, 0.0)
    best = 0.0
    for by0, bx0, by1, bx1 in boxes:
        inter = max(min(y1, by1) - max(y0, by0), 0.0) * max(min(x1, bx1) - max(x0, bx0), 0.0)
        union = a_area + max(by1 - by0, 0.0) * max(bx1 - bx0, 0.0) - inter
        value = inter / union if union > 0 else 0.0
        if value > best:
            best = value
    return best


def valid_rows(labels: np.ndarray) -> np.ndarray:
    """The real objects of one image's padded ``[M, 5]`` label array (class id >= 0)."""
    labels = np.asarray(labels)
    return labels[labels[:, 4] >= 0]


def pad_labels(boxes: np.ndarray, classes: np.ndarray, max_objects: int) -> np.ndarray:
    """One image's boxes ``[n, 4]`` and class ids ``[n]`` as a padded ``float32 [max_objects, 5]``
    array; more than ``max_objects`` objects is a ValueError (callers name the file and the key)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    if len(boxes) != len(classes):
        raise ValueError(f"{len(boxes)} boxes but {len(classes)} class ids")
    if len(boxes) > max_objects:
        raise ValueError(f"{len(boxes)} objects, more than max_objects = {max_objects}")
    out = np.full((max_objects, LABEL_FIELDS), PAD, np.float32)
    out[: len(boxes), :4] = boxes
    out[: len(boxes), 4] = classes
    return out


def to_pixels(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised ``(ymin, xmin, ymax, xmax)`` -> pixel coordinates."""
    return np.asarray(boxes, np.float64) * np.array([height, width, height, width], np.float64)


def to_xywh_pixels(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised ``(ymin, xmin, ymax, xmax)`` -> COCO's ``[x, y, width, height]`` in pixels."""
    p = to_pixels(boxes, height, width).reshape(-1, 4)
    return np.stack([p[:, 1], p[:, 0], p[:, 3] - p[:, 1], p[:, 2] - p[:, 0]], axis=1)


def from_xywh_pixels(xywh: np.ndarray, height: int, width: int) -> np.ndarray:
    """COCO's ``[x, y, width, height]`` in pixels -> normalised ``(ymin, xmin, ymax, xmax)``."""
    q = np.asarray(xywh, np.float64).reshape(-1, 4)
    return np.stack([q[:, 1] / height, q[:, 0] / width, (q[:, 1] + q[:, 3]) / height, (q[:, 0] + q[:, 2]) / width], axis=1)


# --------------------------------------------------------------------------- TensorFlow


def tf_area(boxes):
    """Area of ``[..., 4]`` boxes as a tf tensor."""
    import tensorflow as tf

    return tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)


def tf_iou(a, b):
    """Pairwise IoU of tf boxes, ``[N, 4] x [M, 4] -> [N, M]`` (0 where the union is empty)."""
    import tensorflow as tf

    a = tf.cast(a, tf.float32)
    b = tf.cast(b, tf.float32)
    ymin = tf.maximum(a[:, None, 0], b[None, :, 0])
    xmin = tf.maximum(a[:, None, 1], b[None, :, 1])
    ymax = tf.minimum(a[:, None, 2], b[None, :, 2])
    xmax = tf.minimum(a[:, None, 3], b[None, :, 3])
    inter = tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)
    union = tf_area(a)[:, None] + tf_area(b)[None, :] - inter
    return tf.math.divide_no_nan(inter, union)


def tf_elementwise_iou(a, b):
    """IoU of matching rows, ``[..., 4] x [..., 4] -> [...]`` (losses, augmentation checks)."""
    import tensorflow as tf

    ymin = tf.maximum(a[..., 0], b[..., 0])
    xmin = tf.maximum(a[..., 1], b[..., 1])
    ymax = tf.minimum(a[..., 2], b[..., 2])
    xmax = tf.minimum(a[..., 3], b[..., 3])
    inter = tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)
    return tf.math.divide_no_nan(inter, tf_area(a) + tf_area(b) - inter)


# --------------------------------------------------------------------------- augmentation rules

# data.augment keys that cannot move box or mask labels with the image (a rotated box is no
# longer axis-aligned, a crop policy or an eraser would hide objects the labels still claim,
# mixing blends two label sets). Kept here, free of TensorFlow, so the no-I/O config check in
# tfcnn.data.sources and the data stage (tfcnn.data.box_augment) refuse the same keys.
UNMOVABLE_AUGMENTS = (
    "rotate", "shear", "crop_padding", "resized_crop", "randaugment_ops", "augmix", "erasing", "cutout", "mixup",
    "cutmix",
)  # fmt: skip
MOVABLE_AUGMENTS = ("flip", "vflip", "translate", "zoom")  # moved with the labels by box_augment


def check_label_augments(aug: object, kind: str) -> None:
    """One ConfigError line for the first ``data.augment`` key that `kind` ("boxes" / "masks")
    labels cannot follow; nothing for "classes"."""
    if kind == "classes":
        return
    from tfcnn.errors import ConfigError

    for name in UNMOVABLE_AUGMENTS:
        if getattr(aug, name, None):
            raise ConfigError(
                f"data.augment.{name} cannot move {kind} labels with the image; remove data.augment.{name} "
                f"(detection / segmentation data supports {', '.join(MOVABLE_AUGMENTS)} and the photometric keys)"
            )
