"""Post-processing: raw detector outputs -> a fixed number of scored, class-labelled boxes.

This runs in evaluation *and inside every exported graph* (SavedModel, ONNX, TFLite), so that an
app gets final detections instead of re-implementing anchor decoding. That constrains how it is
written: only ops the TFLite converter maps to BUILTIN kernels (no Flex / SELECT_TF_OPS, which
would add megabytes to the app and are missing from LiteRT's default runtime), and fixed output
shapes (TFLite's SSD convention: ``boxes [B, N, 4]``, ``classes [B, N]`` as float,
``scores [B, N]``, ``num_detections [B]``, zero-padded).

Per image: sigmoid scores flattened over (anchor, class) -> ``top_k`` to ``pre_nms_top_k``
candidates (TOPK_V2; decoding every anchor would waste most of the time on background) -> decode
only those and clip to the image -> drop boxes with no area left -> shift each box by
``2 * class id`` so that one class-agnostic NonMaxSuppressionV5 (NON_MAX_SUPPRESSION_V5, padded
to a static ``max_detections``) suppresses only within a class -> gather and zero-pad. NMS
returns its picks by descending score, so the outputs are sorted. A small static batch (the
mobile wrappers' 1) is unrolled, with no loop in the graph; a dynamic batch (serving) goes
through ``tf.map_fn``. Scores follow NMS: a candidate is kept when its score is above
``score_threshold``.

The single-object localiser needs no NMS: its one box, the best of the K object classes by
softmax probability, and ``num_detections`` 0 when that is below the threshold or "no object"
is more probable.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tfcnn.tasks.box_coding import decode

# Per-class shift of the boxes before the class-agnostic NMS; clipped boxes live in [0, 1], so
# boxes of different classes never overlap after it.
CLASS_OFFSET = 2.0
OUTPUT_KEYS = ("boxes", "classes", "scores", "num_detections")
# Static batches up to this size are unrolled image by image (TFLite gets no While / TensorList
# ops); larger or dynamic batches use tf.map_fn, which keeps the graph one image's size.
UNROLL_MAX_BATCH = 8


# Every op of the post-processing is created under this name scope, so the exported graph's
# tail can be told apart from the model by name (full-integer TFLite keeps it in float).
SCOPE = "detection_postprocess"


TIE_BREAK = 2e-3  # the largest ranking bonus (index 0); it falls to 0 at the last candidate


def tie_break(n: int) -> np.ndarray:
    """float32 ``[n]`` ranking bonuses, strictly decreasing with the candidate index while the
    step ``TIE_BREAK / n`` exceeds float32's spacing below 1 (n up to ~16,000); beyond that, some
    neighbours share a bonus and their ties are broken by the runtime as before."""
    return np.linspace(TIE_BREAK, 0.0, num=max(n, 1), dtype=np.float64).astype(np.float32)


def float_sigmoid(x: Any) -> Any:
    """``sigmoid(x)`` as ``e / (1 + e)`` with ``e = min(exp(x), 1e30)``, for the full-integer TFLite file.

    Measured on exported detectors, each other form broke it:

    * ``tf.sigmoid`` (LOGISTIC) has a fixed int8 output scale, 1/256, and the converter wraps it
      in a quantize / dequantize pair even inside the float post-processing, so every score sat
      on a 1/256 grid and tied the scores that rank detections;
    * ``1 / (1 + exp(-x))`` is fused back into LOGISTIC;
    * ``exp(min(x, 0)) / (1 + exp(-|x|))`` stays float, but MINIMUM(x, 0) is a same-scale op and
      the quantizer carried its [.., 0] range back into the model's raw outputs: every positive
      box offset and class logit was clipped to 0 (mAP@0.5 -4.75 points on the test detector).

    Here the first op on the raw outputs is EXP, which passes no range back; the MINIMUM after it
    keeps ``exp`` of a logit above 88 (inf) from making inf / inf = NaN."""
    import tensorflow as tf

    e = tf.minimum(tf.exp(x), 1e30)
    return e / (1.0 + e)


def _detect_one(
    raw: Any, anchors: Any, score_threshold: float, nms_iou: float, pre_nms_top_k: int, max_detections: int
) -> tuple[Any, Any, Any, Any]:
    """One image's ``raw [A, 4 + K]`` -> (boxes [N, 4], classes [N], scores [N], num [])."""
    import tensorflow as tf

    num_anchors, width = raw.shape[-2], raw.shape[-1]
    num_classes = width - 4
    k = min(int(pre_nms_top_k), num_anchors * num_classes)
    n = int(max_detections)

    scores = tf.reshape(float_sigmoid(raw[:, 4:]), [-1])  # [A * K], anchor-major
    # Ranking key: the score plus a tiny bonus falling with the (anchor, class) index, so equal
    # scores (common once logits are int8: a few hundred distinct values) rank by index in every
    # runtime. TFLite builds, ONNX Runtime and CoreML break top-k / NMS ties differently, and
    # MediaPipe's runtime picked other tied boxes than LiteRT on the same file. The key only
    # orders candidates; the scores returned (and thresholded) are the model's own.
    key = scores + tf.constant(tie_break(num_anchors * num_classes))
    _, top = tf.math.top_k(key, k=k, sorted=True)
    top_scores = tf.gather(scores, top)
    top_key = tf.gather(key, top)
    anchor_index = top // num_classes
    class_id = tf.cast(top % num_classes, tf.float32)
    boxes = decode(tf.gather(raw[:, :4], anchor_index), tf.gather(anchors, anchor_index))
    boxes = tf.clip_by_value(boxes, 0.0, 1.0)

    shifted = boxes + (class_id * CLASS_OFFSET)[:, None]
    # A box with no area as NMS sees it (wholly outside the image, or thinner than the float
    # spacing at its class offset) is no detection; it must not reach NMS at all: its IoU with
    # itself is 0, and TFLite's NMS kernel then selects the same box again and again.
    real_box = tf.logical_and(shifted[:, 2] - shifted[:, 0] > 0.0, shifted[:, 3] - shifted[:, 1] > 0.0)
    real_box = tf.logical_and(real_box, top_scores > float(score_threshold))
    top_key = tf.where(real_box, top_key, -1.0)

    keep = min(n, k)
    selected, selected_scores, valid = tf.raw_ops.NonMaxSuppressionV5(
        boxes=shifted,
        scores=top_key,
        max_output_size=keep,
        iou_threshold=float(nms_iou),
        score_threshold=float(score_threshold),
        soft_nms_sigma=0.0,
        pad_to_max_output_size=True,
    )
    # Pad the selection to `keep` rows here rather than trusting pad_to_max_output_size: the
    # CoreML converter ignores that flag and returns only the valid rows; and mask by the score
    # threshold again, because CoreML's NMS never returns an empty result (it reports the best box,
    # whatever its score). The same rows then come out of TF, TFLite, ONNX and CoreML.
    selected = tf.concat([selected, tf.zeros([keep], selected.dtype)], 0)[:keep]
    selected_scores = tf.gather(top_scores, selected)  # the model's scores, not the ranking key
    real = tf.logical_and(tf.range(keep) < valid, selected_scores > float(score_threshold))  # [keep]
    valid = tf.reduce_sum(tf.cast(real, tf.int32))
    out_boxes = tf.where(real[:, None], tf.gather(boxes, selected), 0.0)
    out_classes = tf.where(real, tf.gather(class_id, selected), 0.0)
    out_scores = tf.where(real, selected_scores, 0.0)
    if keep < n:  # fewer candidates than detections asked for: pad to the fixed N
        out_boxes = tf.pad(out_boxes, [[0, n - keep], [0, 0]])
        out_classes = tf.pad(out_classes, [[0, n - keep]])
        out_scores = tf.pad(out_scores, [[0, n - keep]])
    return out_boxes, out_classes, out_scores, tf.cast(valid, tf.float32)


def detect(
    raw: Any,
    anchors: np.ndarray,
    *,
    score_threshold: float,
    nms_iou: float,
    pre_nms_top_k: int,
    max_detections: int,
) -> dict[str, Any]:
    """Final detections from the detector's raw output ``[B, A, 4 + K]`` (anchors ``[A, 4]`` in
    :func:`~tfcnn.models.anchors.generate_anchors` order): a dict of ``boxes float32 [B, N, 4]``
    (clipped to [0, 1]), ``classes float32 [B, N]``, ``scores float32 [B, N]`` and
    ``num_detections float32 [B]``, N = ``max_detections``, sorted by score, zero-padded.
    A candidate counts when its sigmoid score is above ``score_threshold`` and it has an area
    left after clipping."""
    import tensorflow as tf

    with tf.name_scope(SCOPE):
        return _detect(raw, anchors, score_threshold, nms_iou, pre_nms_top_k, max_detections)


def _detect(raw: Any, anchors: np.ndarray, score_threshold: float, nms_iou: float, pre_nms_top_k: int, max_detections: int) -> dict[str, Any]:
    import tensorflow as tf

    raw = tf.cast(raw, tf.float32)
    anchors = tf.constant(np.asarray(anchors, np.float32))
    if raw.shape[1] is None or raw.shape[2] is None:
        raise ValueError(f"detect needs a static anchor count and width, got raw of shape {raw.shape}")
    if raw.shape[1] != anchors.shape[0]:
        raise ValueError(f"raw output has {raw.shape[1]} anchors but {anchors.shape[0]} anchors were given")
    args = (float(score_threshold), float(nms_iou), int(pre_nms_top_k), int(max_detections))
    n = int(max_detections)
    batch = raw.shape[0]
    if batch is not None and batch <= UNROLL_MAX_BATCH:  # static batch (mobile: 1): no loop in the graph
        per_image = [_detect_one(raw[i], anchors, *args) for i in range(batch)]
        boxes, classes, scores, num = (tf.stack(list(t), 0) for t in zip(*per_image))
    else:
        boxes, classes, scores, num = tf.map_fn(
            lambda r: _detect_one(r, anchors, *args),
            raw,
            fn_output_signature=(
                tf.TensorSpec([n, 4], tf.float32),
                tf.TensorSpec([n], tf.float32),
                tf.TensorSpec([n], tf.float32),
                tf.TensorSpec([], tf.float32),
            ),
        )
    return {"boxes": boxes, "classes": classes, "scores": scores, "num_detections": num}


def detect_single(raw: Any, *, score_threshold: float) -> dict[str, Any]:
    """The single-object localiser's ``raw [B, 4 + K + 1]`` as the same dict with N = 1: its box
    (clipped), class = argmax over the K object classes, score = that class's softmax probability;
    ``num_detections`` 0 (and the row zeroed) when the score is not above ``score_threshold``
    (as in :func:`detect`) or the "no object" class is more probable."""
    import tensorflow as tf

    with tf.name_scope(SCOPE):
        return _detect_single(raw, score_threshold)


def _detect_single(raw: Any, score_threshold: float) -> dict[str, Any]:
    import tensorflow as tf

    raw = tf.cast(raw, tf.float32)
    logits = raw[:, 4:]
    best = tf.reduce_max(logits[:, :-1], axis=-1)  # the best object class, and below its softmax probability
    cls = tf.cast(tf.argmax(logits[:, :-1], axis=-1, output_type=tf.int32), tf.float32)
    # softmax(logits)[best] = 1 / sum_j exp(l_j - l_best), written so the converter finds no SOFTMAX
    # pattern to fuse (see float_sigmoid: SOFTMAX has the same fixed 1/256 int8 output scale)
    score = 1.0 / tf.reduce_sum(tf.exp(logits - best[:, None]), axis=-1)
    found = tf.logical_and(score > score_threshold, best >= logits[:, -1])  # "above", as NMS's threshold
    box = tf.where(found[:, None], tf.clip_by_value(raw[:, :4], 0.0, 1.0), 0.0)
    return {
        "boxes": box[:, None, :],
        "classes": tf.where(found, cls, 0.0)[:, None],
        "scores": tf.where(found, score, 0.0)[:, None],
        "num_detections": tf.cast(found, tf.float32),
    }
