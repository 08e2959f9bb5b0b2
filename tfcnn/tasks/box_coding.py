"""Box coding and anchor assignment: how ground-truth boxes become the detector's training targets.

A one-stage detector does not regress box corners directly: each anchor predicts *offsets* from
itself, ``ty = (cy - cy_a) / h_a / 0.1``, ``tx = (cx - cx_a) / w_a / 0.1``,
``th = log(h / h_a) / 0.2``, ``tw = log(w / w_a) / 0.2`` (the SSD / RetinaNet / Detectron coding;
:data:`VARIANCE` scales the offsets to roughly unit variance so one loss weight suits all four).
The same coding is needed in three places that must agree exactly -- target assignment in
tf.data, the IoU losses (which decode the predictions) and the exported post-processing graph --
so it lives here once, in TensorFlow (graphs, tf.data) and numpy (metrics, tests), and
:func:`encode` / :func:`decode` are exact inverses (tested).

Assignment (:func:`assign`) follows RetinaNet: an anchor whose best IoU with a ground-truth box is
``>= positive_iou`` is positive for that box, one below ``negative_iou`` is background, and one in
between is *ignored* (neither pushes the classifier towards object nor background, the boundary
being ambiguous). Then Detectron's "low-quality matches" rule: every ground-truth box's best
anchor(s) (ties included, as Detectron2's ``allow_low_quality_matches``) are made positive for it
even below ``positive_iou``, so a small or oddly shaped object is never left without any anchor
to learn from. An anchor that is the best one of several boxes takes the one it overlaps most.
A box that overlaps no anchor at all (IoU 0, e.g. a degenerate box) gets none.

TensorFlow is imported inside the functions so that ``import tfcnn.tasks`` (which runs for every
config check) stays free of it, as the rest of the package does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tfcnn.data.boxes import LABEL_FIELDS, PAD, tf_iou

VARIANCE: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)

# Smallest height / width taken into a log (a degenerate box encodes to a large negative, finite th/tw).
MIN_SIZE = 1e-8
# Largest log-scale change decode applies (Detectron's BBOX_XFORM_CLIP = log(1000 / 16)): an
# untrained head's large th/tw would otherwise overflow exp() into inf boxes and NaN losses.
MAX_LOG_SCALE = math.log(1000.0 / 16.0)

# Class column of assign()'s targets.
BACKGROUND = -1.0
IGNORE = -2.0


# --------------------------------------------------------------------------- numpy


def _np_centres(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    b = np.asarray(boxes, np.float64)
    h = b[..., 2] - b[..., 0]
    w = b[..., 3] - b[..., 1]
    return b[..., 0] + 0.5 * h, b[..., 1] + 0.5 * w, h, w


def np_encode(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Numpy twin of :func:`encode` (computed in float64; float32 out unless an input is float64)."""
    dtype = np.result_type(np.asarray(boxes).dtype, np.asarray(anchors).dtype, np.float32)
    cy, cx, h, w = _np_centres(boxes)
    cya, cxa, ha, wa = _np_centres(anchors)
    ha = np.maximum(ha, MIN_SIZE)
    wa = np.maximum(wa, MIN_SIZE)
    out = np.stack(
        [
            (cy - cya) / ha / VARIANCE[0],
            (cx - cxa) / wa / VARIANCE[1],
            np.log(np.maximum(h, MIN_SIZE) / ha) / VARIANCE[2],
            np.log(np.maximum(w, MIN_SIZE) / wa) / VARIANCE[3],
        ],
        axis=-1,
    )
    return out.astype(dtype)


def np_decode(deltas: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Numpy twin of :func:`decode`."""
    dtype = np.result_type(np.asarray(deltas).dtype, np.asarray(anchors).dtype, np.float32)
    d = np.asarray(deltas, np.float64)
    cya, cxa, ha, wa = _np_centres(anchors)
    cy = cya + d[..., 0] * VARIANCE[0] * ha
    cx = cxa + d[..., 1] * VARIANCE[1] * wa
    h = ha * np.exp(np.minimum(d[..., 2] * VARIANCE[2], MAX_LOG_SCALE))
    w = wa * np.exp(np.minimum(d[..., 3] * VARIANCE[3], MAX_LOG_SCALE))
    out = np.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)
    return out.astype(dtype)


# --------------------------------------------------------------------------- TensorFlow


def _centres(boxes: Any) -> tuple[Any, Any, Any, Any]:
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * h, boxes[..., 1] + 0.5 * w, h, w


def encode(boxes: Any, anchors: Any) -> Any:
    """Boxes ``[..., 4]`` as offsets ``(ty, tx, th, tw)`` from the anchors ``[..., 4]`` (broadcast
    elementwise). Sizes below :data:`MIN_SIZE` are taken as MIN_SIZE, so nothing is log(0)."""
    import tensorflow as tf

    boxes = tf.cast(boxes, tf.float32)
    anchors = tf.cast(anchors, tf.float32)
    cy, cx, h, w = _centres(boxes)
    cya, cxa, ha, wa = _centres(anchors)
    ha = tf.maximum(ha, MIN_SIZE)
    wa = tf.maximum(wa, MIN_SIZE)
    return tf.stack(
        [
            (cy - cya) / ha / VARIANCE[0],
            (cx - cxa) / wa / VARIANCE[1],
            tf.math.log(tf.maximum(h, MIN_SIZE) / ha) / VARIANCE[2],
            tf.math.log(tf.maximum(w, MIN_SIZE) / wa) / VARIANCE[3],
        ],
        axis=-1,
    )


def decode(deltas: Any, anchors: Any) -> Any:
    """Offsets ``[..., 4]`` from the anchors back to ``(ymin, xmin, ymax, xmax)`` boxes (not
    clipped; log-scales above :data:`MAX_LOG_SCALE` are clipped so exp() stays finite)."""
    import tensorflow as tf

    deltas = tf.cast(deltas, tf.float32)
    anchors = tf.cast(anchors, tf.float32)
    cya, cxa, ha, wa = _centres(anchors)
    cy = cya + deltas[..., 0] * VARIANCE[0] * ha
    cx = cxa + deltas[..., 1] * VARIANCE[1] * wa
    h = ha * tf.exp(tf.minimum(deltas[..., 2] * VARIANCE[2], MAX_LOG_SCALE))
    w = wa * tf.exp(tf.minimum(deltas[..., 3] * VARIANCE[3], MAX_LOG_SCALE))
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def _with_pad_row(labels: Any) -> Any:
    """``labels [..., M, 5]`` with one padding row appended, so argmax over objects is defined
    even for ``M = 0`` (the padding row can never match: its IoU is masked to -1)."""
    import tensorflow as tf

    labels = tf.cast(labels, tf.float32)
    pad_shape = tf.concat([tf.shape(labels)[:-2], [1, LABEL_FIELDS]], 0)
    return tf.concat([labels, tf.fill(pad_shape, PAD)], axis=-2)


def assign(anchors: Any, labels: Any, positive_iou: float, negative_iou: float) -> Any:
    """Training targets of one image: ``float32 [A, 5]`` rows (encoded box, class) per anchor.

    ``labels`` is the image's padded ``[M, 5]`` array. The class column holds the matched box's
    class id for positives, :data:`BACKGROUND` (-1) below ``negative_iou`` and :data:`IGNORE` (-2)
    in ``[negative_iou, positive_iou)``; the box columns are zero except on positives. Every
    ground-truth box's best anchor is positive for it whatever its IoU (module docstring).
    """
    import tensorflow as tf

    anchors = tf.cast(anchors, tf.float32)
    labels = _with_pad_row(labels)  # [M+1, 5]
    gt_boxes = labels[:, :4]
    gt_classes = labels[:, 4]
    valid = gt_classes >= 0  # [M+1]

    overlaps = tf_iou(anchors, gt_boxes)  # [A, M+1]
    overlaps = tf.where(valid[None, :], overlaps, -1.0)
    best_gt = tf.argmax(overlaps, axis=1, output_type=tf.int32)  # [A]
    best_iou = tf.reduce_max(overlaps, axis=1)  # [A]

    # low-quality matches: the anchors whose IoU equals a real box's best IoU (> 0) are forced to it
    gt_best = tf.reduce_max(overlaps, axis=0)  # [M+1]
    forced = tf.logical_and(tf.equal(overlaps, gt_best[None, :]), (valid & (gt_best > 0))[None, :])  # [A, M+1]
    is_forced = tf.reduce_any(forced, axis=1)  # [A]
    forced_gt = tf.argmax(tf.where(forced, overlaps, -1.0), axis=1, output_type=tf.int32)
    matched = tf.where(is_forced, forced_gt, best_gt)

    positive = tf.logical_or(best_iou >= positive_iou, is_forced)
    ignored = tf.logical_and(tf.logical_not(positive), best_iou >= negative_iou)
    classes = tf.where(positive, tf.gather(gt_classes, matched), tf.where(ignored, IGNORE, BACKGROUND))

    deltas = encode(tf.gather(gt_boxes, matched), anchors)  # [A, 4]
    deltas = tf.where(positive[:, None], deltas, 0.0)
    return tf.concat([deltas, classes[:, None]], axis=1)


def assign_batch(anchors: Any, labels: Any, positive_iou: float, negative_iou: float) -> Any:
    """:func:`assign` over a batch: ``labels [B, M, 5] -> float32 [B, A, 5]``, for tf.data ``map``
    on batched data. One image at a time (``tf.map_fn``): the ``[A, M]`` IoU matrix of a whole
    batch of large images would be gigabytes."""
    import tensorflow as tf

    anchors = tf.cast(tf.convert_to_tensor(anchors), tf.float32)
    labels = tf.cast(labels, tf.float32)
    num_anchors = anchors.shape[0]
    return tf.map_fn(
        lambda one: assign(anchors, one, positive_iou, negative_iou),
        labels,
        fn_output_signature=tf.TensorSpec([num_anchors, LABEL_FIELDS], tf.float32),
    )


def single_object_target(labels: Any) -> Any:
    """The single-object localiser's target ``float32 [B, 5]``: each image's first object (the
    first row with a class id >= 0) as (box, class), or zeros with class -1 when it has none."""
    import tensorflow as tf

    labels = _with_pad_row(labels)  # [B, M+1, 5]
    valid = labels[..., 4] >= 0
    rows = tf.shape(labels)[1]
    index = tf.range(rows, dtype=tf.int32)[None, :]
    first = tf.reduce_min(tf.where(valid, index, rows - 1), axis=1)  # the pad row when none: masked below
    row = tf.gather(labels, first, axis=1, batch_dims=1)  # [B, 5]
    has = tf.reduce_any(valid, axis=1)
    box = tf.where(has[:, None], row[:, :4], 0.0)
    cls = tf.where(has, row[:, 4], BACKGROUND)
    return tf.concat([box, cls[:, None]], axis=1)
