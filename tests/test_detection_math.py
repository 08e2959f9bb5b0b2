"""Detection maths: box coding, anchor assignment, focal / box losses and post-processing.

Small hand-made cases with known answers (no training), the course identities, the coding's
inverse property (hypothesis), and the exported-graph constraints of the post-processing: the
TFLite conversion uses BUILTIN ops only and LiteRT agrees with TensorFlow (ONNX too).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

tf = pytest.importorskip("tensorflow")

from tfcnn.config import DetectionConfig  # noqa: E402
from tfcnn.data.boxes import iou as np_iou  # noqa: E402
from tfcnn.models.anchors import AnchorSpec, count, generate_anchors  # noqa: E402
from tfcnn.tasks import box_coding as bc  # noqa: E402
from tfcnn.tasks import detection_losses as dl  # noqa: E402
from tfcnn.tasks import postprocess as pp  # noqa: E402

SMALL = AnchorSpec(levels=(3,))  # 16 x 16 image: 2 x 2 cells x 9 anchors = 36


# --------------------------------------------------------------------------- anchors


def test_anchor_counts():
    assert AnchorSpec().per_location == 9
    assert count(AnchorSpec(levels=(0,)), 50, 50) == 22_500
    assert generate_anchors(SMALL, 16, 16).shape == (36, 4)


# --------------------------------------------------------------------------- coding

_centre = st.floats(-0.5, 1.5)
_size = st.floats(0.02, 1.0)
_offset = st.floats(-4.0, 4.0)  # th * 0.2 stays below decode's log-scale clip


def _box(cy: float, cx: float, h: float, w: float) -> list[float]:
    return [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]


@settings(max_examples=60, deadline=None)
@given(st.tuples(_centre, _centre, _size, _size), st.tuples(_offset, _offset, _offset, _offset))
def test_encode_inverts_decode(anchor, t):
    anchors = np.array([_box(*anchor)])
    deltas = np.array([t])
    np.testing.assert_allclose(bc.np_encode(bc.np_decode(deltas, anchors), anchors), deltas, atol=1e-9)
    back = bc.encode(bc.decode(deltas.astype(np.float32), anchors.astype(np.float32)), anchors.astype(np.float32))
    np.testing.assert_allclose(back.numpy(), deltas, atol=2e-3)


@settings(max_examples=60, deadline=None)
@given(st.tuples(_centre, _centre, _size, _size), st.tuples(_centre, _centre, _size, _size))
def test_decode_inverts_encode(anchor, box):
    anchors = np.array([_box(*anchor)])
    boxes = np.array([_box(*box)])
    np.testing.assert_allclose(bc.np_decode(bc.np_encode(boxes, anchors), anchors), boxes, atol=1e-9)
    back = bc.decode(bc.encode(boxes.astype(np.float32), anchors.astype(np.float32)), anchors.astype(np.float32))
    np.testing.assert_allclose(back.numpy(), boxes, atol=1e-5)
    # the tf and numpy twins agree
    np.testing.assert_allclose(bc.encode(boxes, anchors).numpy(), bc.np_encode(boxes, anchors), rtol=1e-4, atol=1e-4)


def test_coding_is_finite_on_degenerate_and_huge_inputs():
    anchors = np.array([[0.1, 0.1, 0.3, 0.3], [0.2, 0.2, 0.2, 0.2]], np.float32)
    boxes = np.array([[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.4, 0.4]], np.float32)  # zero-size box / anchor
    assert np.isfinite(bc.encode(boxes, anchors).numpy()).all()
    assert np.isfinite(bc.np_encode(boxes, anchors)).all()
    huge = np.array([[0.0, 0.0, 1e4, 1e4]] * 2, np.float32)
    assert np.isfinite(bc.decode(huge, anchors[:1]).numpy()).all()
    assert np.isfinite(bc.np_decode(huge, anchors[:1])).all()


# --------------------------------------------------------------------------- assignment

# hand-made anchors: IoUs with the boxes below are written beside them
ANCHORS = np.array(
    [
        [0.0, 0.0, 0.5, 0.5],  # 0: == box A
        [0.0, 0.0, 0.5, 0.5 / 0.45],  # 1: IoU(A) = 0.45: ignore band
        [0.6, 0.6, 1.0, 1.0],  # 2: touches nothing: background
        [0.6, 0.0, 1.0, 0.4],  # 3: IoU(B) = 0.25: B's best anchor
        [0.5, 0.0, 1.0, 0.5],  # 4: IoU(B) = 0.16: background
    ],
    np.float32,
)
BOX_A = [0.0, 0.0, 0.5, 0.5]
BOX_B = [0.6, 0.0, 0.8, 0.2]


def _labels(*rows, m: int = 4) -> np.ndarray:
    out = np.full((m, 5), -1.0, np.float32)
    for i, r in enumerate(rows):
        out[i] = r
    return out


def test_hand_made_ious_are_as_designed():
    got = np_iou(ANCHORS, np.array([BOX_A, BOX_B]))
    np.testing.assert_allclose(got[:, 0], [1.0, 0.45, 0.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(got[:, 1], [0.0, 0.0, 0.0, 0.25, 0.16], atol=1e-6)


_coord = st.integers(0, 96).map(lambda v: v / 96)  # the scene generator's pixel grid, degenerate boxes included


@settings(max_examples=300, deadline=None)
@given(st.tuples(_coord, _coord, _coord, _coord), st.lists(st.tuples(_coord, _coord, _coord, _coord), max_size=8))
def test_scalar_max_iou_is_bit_identical_to_the_numpy_iou(box, boxes):
    """The scene generator's plain-Python placement check gives the numpy reference's doubles
    exactly (so switching to it left every generated scene byte-identical)."""
    from tfcnn.data.boxes import max_iou

    want = float(np_iou(np.array([box]), np.array(boxes)).max()) if boxes else 0.0
    assert max_iou(box, boxes) == want


def test_assign_positive_ignore_background_and_best_anchor_rule():
    labels = _labels([*BOX_A, 2.0], [*BOX_B, 1.0])
    t = bc.assign(tf.constant(ANCHORS), labels, 0.5, 0.4).numpy()
    assert t.shape == (5, 5) and t.dtype == np.float32
    np.testing.assert_array_equal(t[:, 4], [2.0, bc.IGNORE, bc.BACKGROUND, 1.0, bc.BACKGROUND])
    np.testing.assert_allclose(t[0, :4], 0.0, atol=1e-6)  # box == anchor: zero offsets
    np.testing.assert_allclose(t[3, :4], bc.np_encode(np.array(BOX_B), ANCHORS[3]), atol=1e-5)  # low-quality match
    np.testing.assert_array_equal(t[[1, 2, 4], :4], 0.0)  # no box target off positives


def test_assign_without_the_low_quality_match_when_a_box_has_no_overlap():
    # a box touching no anchor (IoU 0 everywhere) is not forced onto an arbitrary anchor
    labels = _labels([0.52, 0.52, 0.58, 0.58, 0.0])
    assert np_iou(ANCHORS, labels[:1, :4]).max() == 0.0
    t = bc.assign(tf.constant(ANCHORS), labels, 0.5, 0.4).numpy()
    np.testing.assert_array_equal(t[:, 4], bc.BACKGROUND)


def test_assign_empty_images_are_all_background():
    for labels in (_labels(), np.zeros((0, 5), np.float32)):
        t = bc.assign(tf.constant(ANCHORS), labels, 0.5, 0.4).numpy()
        np.testing.assert_array_equal(t[:, 4], bc.BACKGROUND)
        np.testing.assert_array_equal(t[:, :4], 0.0)


def test_assign_batch_in_tf_data_matches_per_image():
    labels = np.stack([_labels([*BOX_A, 2.0], [*BOX_B, 1.0]), _labels(), _labels([*BOX_B, 0.0])])
    ds = tf.data.Dataset.from_tensor_slices(labels).batch(3).map(lambda y: bc.assign_batch(ANCHORS, y, 0.5, 0.4))
    (batch,) = list(ds.as_numpy_iterator())
    assert batch.shape == (3, 5, 5)
    for i in range(3):
        np.testing.assert_array_equal(batch[i], bc.assign(tf.constant(ANCHORS), labels[i], 0.5, 0.4).numpy())


def test_single_object_target():
    labels = np.stack([_labels([*BOX_A, 2.0], [*BOX_B, 1.0]), _labels(), _labels([-1, -1, -1, -1, -1], [*BOX_B, 0.0])])
    t = bc.single_object_target(labels).numpy()
    np.testing.assert_allclose(t, [[*BOX_A, 2.0], [0, 0, 0, 0, -1.0], [*BOX_B, 0.0]], atol=1e-7)


# --------------------------------------------------------------------------- focal loss


def _np_bce(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def _targets_and_logits(seed: int = 0):
    rng = np.random.default_rng(seed)
    cls = np.array([[0, -1, 2, -2, -1, 1], [-1, -1, -2, -1, -1, -1]], np.float32)  # image 2: no positives
    logits = rng.normal(0, 2, size=(2, 6, 3)).astype(np.float32)
    return cls, logits


def _onehot(cls: np.ndarray, k: int) -> np.ndarray:
    return (cls[..., None] == np.arange(k)).astype(np.float64)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.8])
def test_focal_gamma0_is_alpha_weighted_bce(alpha):
    cls, logits = _targets_and_logits()
    y = _onehot(cls, 3)
    w = np.where(y == 1, alpha, 1 - alpha) * (cls != -2)[..., None]
    npos = np.maximum((cls >= 0).sum(1), 1)
    want = (w * _np_bce(y, logits.astype(np.float64))).sum((1, 2)) / npos
    np.testing.assert_allclose(dl.focal_loss(cls, logits, 0.0, alpha).numpy(), want, rtol=1e-5)


def test_focal_gamma0_alpha_half_is_half_bce():
    cls, logits = _targets_and_logits(1)
    y = tf.one_hot(tf.cast(cls, tf.int32), 3)
    keep = tf.cast(cls > -2, tf.float32)[..., None]
    bce = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits) * keep, [1, 2])
    bce /= np.maximum((cls >= 0).sum(1), 1)
    np.testing.assert_allclose(dl.focal_loss(cls, logits, 0.0, 0.5).numpy(), 0.5 * bce.numpy(), rtol=1e-6)


def test_focal_matches_the_formula_and_alpha_weighs_positives():
    cls, logits = _targets_and_logits(2)
    y = _onehot(cls, 3)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    pt = np.where(y == 1, p, 1 - p)
    w = np.where(y == 1, 0.25, 0.75) * (cls != -2)[..., None]
    want = (w * (1 - pt) ** 2 * _np_bce(y, logits.astype(np.float64))).sum((1, 2)) / np.maximum((cls >= 0).sum(1), 1)
    np.testing.assert_allclose(dl.focal_loss(cls, logits, 2.0, 0.25).numpy(), want, rtol=1e-5)
    # one class, one anchor: a negative at logit +x costs 3x a positive at logit -x when alpha = 0.25
    neg = dl.focal_loss(np.array([[-1.0]]), np.array([[[1.5]]], np.float32), 2.0, 0.25).numpy()
    pos = dl.focal_loss(np.array([[0.0]]), np.array([[[-1.5]]], np.float32), 2.0, 0.25).numpy()
    np.testing.assert_allclose(neg, 3 * pos, rtol=1e-5)


def test_focal_ignores_ignored_anchors_and_normalises_by_positives():
    cls, logits = _targets_and_logits(3)
    base = dl.focal_loss(cls, logits, 2.0, 0.25).numpy()
    changed = logits.copy()
    changed[0, 3] += 50.0  # anchor 3 of image 0 is ignored
    np.testing.assert_allclose(dl.focal_loss(cls, changed, 2.0, 0.25).numpy(), base, rtol=1e-6)
    # doubling the image (same anchors twice) doubles the sum and the positives: same loss
    doubled = dl.focal_loss(np.concatenate([cls, cls], 1), np.concatenate([logits, logits], 1), 2.0, 0.25).numpy()
    np.testing.assert_allclose(doubled[0], base[0], rtol=1e-5)


def test_focal_gradients_finite_on_saturated_logits():
    cls = np.array([[0.0, -1.0]], np.float32)
    logits = tf.Variable([[[80.0, -80.0], [-80.0, -80.0]]])
    for gamma in (0.0, 0.5, 2.0):
        with tf.GradientTape() as tape:
            loss = dl.focal_loss(cls, logits, gamma, 0.25)
        assert np.isfinite(tape.gradient(loss, logits).numpy()).all()


# --------------------------------------------------------------------------- box losses


def _detection_targets():
    labels = np.stack([_labels([*BOX_A, 2.0], [*BOX_B, 1.0]), _labels()])
    return bc.assign_batch(ANCHORS, labels, 0.5, 0.4)


@pytest.mark.parametrize("kind", dl.BOX_LOSSES)
def test_box_losses_zero_at_perfect_prediction_and_positive_only(kind):
    targets = _detection_targets()
    perfect = targets[..., :4].numpy()
    np.testing.assert_allclose(dl.box_loss(kind, targets, perfect, ANCHORS, 0.1).numpy(), 0.0, atol=1e-6)
    off_positives = perfect.copy()
    off_positives[0, [1, 2, 4]] += 3.0  # ignored and background anchors: no box loss
    off_positives[1] += 3.0  # an image without objects: none at all
    np.testing.assert_allclose(dl.box_loss(kind, targets, off_positives, ANCHORS, 0.1).numpy(), 0.0, atol=1e-6)
    wrong = perfect.copy()
    wrong[0, 0] += 1.0
    assert dl.box_loss(kind, targets, wrong, ANCHORS, 0.1).numpy()[0] > 0.01


def test_box_loss_known_values():
    targets = _detection_targets()  # image 0: 2 positives (anchors 0 and 3)
    deltas = targets[..., :4].numpy()
    deltas[0, 0] = [1.0, 0.0, 0.0, 0.0]  # ty off by 1 on anchor 0: huber(1, delta 0.1) = 0.1 * (1 - 0.05)
    np.testing.assert_allclose(dl.box_loss("smooth_l1", targets, deltas, ANCHORS, 0.1).numpy(), [0.095 / 2, 0.0], rtol=1e-5)
    # anchor 0 predicted shifted by 0.1 * 0.5 = 0.05 down: IoU = 0.45 * 0.5 / (0.25 + 0.25 - 0.225)
    i = 0.225 / 0.275
    np.testing.assert_allclose(dl.box_loss("iou", targets, deltas, ANCHORS, 0.1).numpy(), [(1 - i) / 2, 0.0], rtol=1e-5)
    # same enclosing box as the union's bounding box here: 0.55 x 0.5 = 0.275 = union, so GIoU = IoU
    np.testing.assert_allclose(dl.box_loss("giou", targets, deltas, ANCHORS, 0.1).numpy(), [(1 - i) / 2, 0.0], rtol=1e-5)


def test_giou_values_and_degenerate_boxes_stay_finite():
    a = tf.constant([[0.0, 0.0, 0.2, 0.2], [0.3, 0.3, 0.3, 0.3], [0.5, 0.5, 0.5, 0.5]])
    b = tf.Variable([[0.0, 0.4, 0.2, 0.6], [0.3, 0.3, 0.3, 0.3], [0.1, 0.1, 0.1, 0.4]])
    with tf.GradientTape() as tape:
        g = dl.giou(a, b)
    # disjoint 0.2-squares 0.2 apart: enclosing 0.2 x 0.6, union 0.08 -> GIoU = 0 - (0.12 - 0.08) / 0.12
    np.testing.assert_allclose(g.numpy()[0], -1 / 3, rtol=1e-5)
    assert np.isfinite(g.numpy()).all()
    assert np.isfinite(tape.gradient(g, b).numpy()).all()


def test_box_loss_finite_on_wild_predictions():
    targets = _detection_targets()
    deltas = tf.Variable(np.array([[[1e6, -1e6, 1e3, -1e3]] * 5] * 2, np.float32))
    for kind in dl.BOX_LOSSES:
        with tf.GradientTape() as tape:
            loss = dl.box_loss(kind, targets, deltas, ANCHORS, 0.1)
        assert np.isfinite(loss.numpy()).all() and np.isfinite(tape.gradient(loss, deltas).numpy()).all()


def test_detection_loss_combines_focal_and_box():
    targets = _detection_targets()
    rng = np.random.default_rng(4)
    raw = rng.normal(size=(2, 5, 7)).astype(np.float32)  # K = 3
    cfg = DetectionConfig(box_loss="giou", box_weight=2.5)
    want = dl.focal_loss(targets[..., 4], raw[..., 4:], cfg.focal_gamma, cfg.focal_alpha) + 2.5 * dl.box_loss(
        "giou", targets, raw[..., :4], ANCHORS, cfg.smooth_l1_delta
    )
    np.testing.assert_allclose(dl.detection_loss(targets, raw, ANCHORS, cfg).numpy(), want.numpy(), rtol=1e-6)


def test_single_object_loss():
    cfg = DetectionConfig(box_loss="iou", box_weight=2.0, classification_weight=0.5)
    targets = np.array([[*BOX_A, 1.0], [0, 0, 0, 0, -1.0]], np.float32)
    logits = np.array([[0.1, 2.0, -1.0, 0.3], [0.2, 0.1, 0.0, 1.5]], np.float32)  # K = 3 + "no object"
    raw = np.concatenate([np.array([BOX_A, [0.2, 0.2, 0.9, 0.9]], np.float32), logits], 1)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    want = 0.5 * -np.array([log_softmax[0, 1], log_softmax[1, 3]])  # perfect box; no box term without object
    np.testing.assert_allclose(dl.single_object_loss(targets, raw, cfg).numpy(), want, rtol=1e-5)
    raw[0, :4] = [0.0, 0.0, 0.5, 0.25]  # half the box: IoU 0.5
    np.testing.assert_allclose(dl.single_object_loss(targets, raw, cfg).numpy(), want + [2.0 * 0.5, 0.0], rtol=1e-5)
    ce, box = dl.single_object_parts(targets, raw, cfg)
    np.testing.assert_allclose(ce.numpy(), want / 0.5, rtol=1e-5)
    np.testing.assert_allclose(box.numpy(), [0.5, 0.0], rtol=1e-5)
    for kind in dl.BOX_LOSSES:
        assert np.isfinite(dl.single_object_loss(targets, raw, DetectionConfig(box_loss=kind)).numpy()).all()


def test_keras_losses_compile_save_and_load(tmp_path):
    import keras

    anchors = generate_anchors(SMALL, 16, 16)
    cfg = DetectionConfig(box_loss="giou", box_weight=3.0)
    loss = dl.detection_keras_loss(cfg, SMALL, 16, 16)
    labels = np.stack([_labels([0.1, 0.1, 0.6, 0.5, 1.0]), _labels()])
    y = bc.assign_batch(anchors, labels, cfg.positive_iou, cfg.negative_iou)
    raw = np.random.default_rng(5).normal(size=(2, 36, 6)).astype(np.float32)
    np.testing.assert_allclose(float(loss(y, raw)), float(np.mean(dl.detection_loss(y, raw, anchors, cfg))), rtol=1e-5)

    inputs = keras.Input((2,))
    outputs = keras.layers.Reshape((36, 6))(keras.layers.Dense(36 * 6)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss=loss)
    assert np.isfinite(model.train_on_batch(np.ones((2, 2), np.float32), y))  # in a compiled train step
    path = tmp_path / "model.keras"
    model.save(path)
    dl.loss_classes()
    again = keras.saving.load_model(path, compile=True)
    restored = again.loss
    assert restored.get_config() == loss.get_config()
    np.testing.assert_allclose(float(restored(y, raw)), float(loss(y, raw)), rtol=1e-6)

    assert dl.DetectionLoss(cfg, SMALL, 16, 16).get_config() == loss.get_config()  # the class, positionally
    single = dl.SingleObjectLoss(DetectionConfig(box_loss="smooth_l1"))
    assert single.get_config() == dl.single_object_keras_loss(DetectionConfig(box_loss="smooth_l1")).get_config()
    clone = type(single).from_config(single.get_config())
    t = np.array([[*BOX_A, 1.0]], np.float32)
    r = np.array([[0.1, 0.0, 0.5, 0.6, 0.2, 1.0, 0.0]], np.float32)
    np.testing.assert_allclose(float(clone(t, r)), float(single(t, r)), rtol=1e-6)


# --------------------------------------------------------------------------- post-processing

NMS_ANCHORS = np.array(
    [
        [0.0, 0.0, 0.5, 0.5],  # 0
        [0.0, 0.1, 0.5, 0.6],  # 1: IoU(0) = 2/3
        [0.0, 0.4, 0.5, 0.9],  # 2: IoU(0) = 0.11
        [0.6, 0.6, 1.2, 1.2],  # 3: past the border: clipped
    ],
    np.float32,
)
LOW = -12.0  # sigmoid ~ 6e-6: under any threshold used


def _raw(logit_rows: dict[int, list[float]], k: int = 2) -> np.ndarray:
    raw = np.zeros((1, len(NMS_ANCHORS), 4 + k), np.float32)
    raw[..., 4:] = LOW
    for anchor, logits in logit_rows.items():
        raw[0, anchor, 4:] = logits
    return raw


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _detect(raw, **kw):
    args = dict(score_threshold=0.05, nms_iou=0.5, pre_nms_top_k=100, max_detections=5)
    args.update(kw)
    return {k: v.numpy() for k, v in pp.detect(raw, NMS_ANCHORS, **args).items()}


def test_nms_keeps_the_best_of_overlapping_boxes_and_both_when_apart():
    out = _detect(_raw({0: [1.0, LOW], 1: [2.0, LOW], 2: [0.5, LOW]}))
    assert out["boxes"].shape == (1, 5, 4) and out["classes"].shape == (1, 5) and out["num_detections"].shape == (1,)
    assert all(v.dtype == np.float32 for v in out.values())
    np.testing.assert_array_equal(out["num_detections"], [2.0])
    np.testing.assert_allclose(out["boxes"][0, :2], NMS_ANCHORS[[1, 2]], atol=1e-6)  # 1 beats 0; 2 overlaps 1 by 0.25
    np.testing.assert_allclose(out["scores"][0], [_sig(2.0), _sig(0.5), 0, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(out["classes"][0], 0.0)
    np.testing.assert_array_equal(out["boxes"][0, 2:], 0.0)
    # a higher IoU threshold keeps the overlapping pair
    loose = _detect(_raw({0: [1.0, LOW], 1: [2.0, LOW]}), nms_iou=0.7)
    np.testing.assert_array_equal(loose["num_detections"], [2.0])


def test_nms_is_per_class():
    out = _detect(_raw({0: [3.0, LOW], 1: [LOW, 2.0], 3: [LOW, 1.0]}))
    np.testing.assert_array_equal(out["num_detections"], [3.0])
    np.testing.assert_array_equal(out["classes"][0, :3], [0.0, 1.0, 1.0])
    np.testing.assert_allclose(out["boxes"][0, :3], [NMS_ANCHORS[0], NMS_ANCHORS[1], [0.6, 0.6, 1.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(out["scores"][0, :3], [_sig(3.0), _sig(2.0), _sig(1.0)], atol=1e-6)


def test_detect_threshold_decoding_and_padding():
    raw = _raw({2: [LOW, 0.0], 3: [-4.0, LOW]})
    raw[0, 2, :4] = [1.0, 0.0, 0.0, 0.0]  # 0.1 * height 0.5 = 0.05 down
    out = _detect(raw, score_threshold=0.1, pre_nms_top_k=3, max_detections=6)  # top_k < max_detections
    assert out["boxes"].shape == (1, 6, 4)
    np.testing.assert_array_equal(out["num_detections"], [1.0])  # sigmoid(-4) = 0.018 < 0.1
    np.testing.assert_allclose(out["boxes"][0, 0], [0.05, 0.4, 0.55, 0.9], atol=1e-6)
    np.testing.assert_array_equal(out["classes"][0], [1.0, 0, 0, 0, 0, 0])
    none = _detect(_raw({}))
    np.testing.assert_array_equal(none["num_detections"], [0.0])
    assert not none["boxes"].any() and not none["scores"].any()


def test_detect_static_and_dynamic_batches_agree():
    rng = np.random.default_rng(6)
    raw = (rng.normal(size=(pp.UNROLL_MAX_BATCH + 1, 4, 6)) * 3).astype(np.float32)
    args = dict(score_threshold=0.2, nms_iou=0.5, pre_nms_top_k=6, max_detections=4)
    static = pp.detect(raw[:3], NMS_ANCHORS, **args)  # unrolled
    mapped = pp.detect(raw, NMS_ANCHORS, **args)  # static but large: map_fn
    fn = tf.function(lambda r: pp.detect(r, NMS_ANCHORS, **args), input_signature=[tf.TensorSpec([None, 4, 6])])
    dynamic = fn(raw)
    for key in pp.OUTPUT_KEYS:
        np.testing.assert_allclose(dynamic[key].numpy(), mapped[key].numpy(), atol=1e-6)
        np.testing.assert_allclose(dynamic[key].numpy()[:3], static[key].numpy(), atol=1e-6)
        assert mapped[key].shape[0] == pp.UNROLL_MAX_BATCH + 1
    scores = static["scores"].numpy()
    assert (np.diff(scores, axis=1) <= 0).all()  # sorted by score


def test_detect_single():
    raw = np.array(
        [
            [0.1, 0.2, 0.6, 0.7, 2.0, 0.0, 0.0],  # class 0 wins
            [0.1, 0.2, 0.6, 0.7, 0.0, 0.0, 3.0],  # "no object" wins
            [0.1, 0.2, 0.6, 0.7, 0.1, 0.0, 0.0],  # class 0, probability 0.36 < 0.5
        ],
        np.float32,
    )
    out = {k: v.numpy() for k, v in pp.detect_single(raw, score_threshold=0.5).items()}
    assert out["boxes"].shape == (3, 1, 4) and out["classes"].shape == (3, 1) and out["num_detections"].shape == (3,)
    e = math.exp(2.0)
    np.testing.assert_allclose(out["scores"][:, 0], [e / (e + 2), 0, 0], rtol=1e-6)
    np.testing.assert_array_equal(out["num_detections"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(out["boxes"][0, 0], [0.1, 0.2, 0.6, 0.7], atol=1e-7)
    assert not out["boxes"][1:].any()
    raw[0, 5] = 5.0
    np.testing.assert_array_equal(pp.detect_single(raw, score_threshold=0.5)["classes"].numpy()[0], [1.0])


# --------------------------------------------------------------------------- exported graphs


def _tflite_ops(model: bytes) -> set[str]:
    from ai_edge_litert.interpreter import Interpreter

    return {d["op_name"] for d in Interpreter(model_content=model)._get_ops_details()}


def _tflite_run(model: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    # a concrete function's dict outputs come out flattened in sorted key order
    return {k: it.get_tensor(d["index"]) for k, d in zip(sorted(pp.OUTPUT_KEYS), it.get_output_details())}


def _convert(fn) -> bytes:
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return conv.convert()


def test_tflite_builtins_only_and_litert_agrees():
    anchors = generate_anchors(SMALL, 16, 16)
    args = dict(score_threshold=0.3, nms_iou=0.5, pre_nms_top_k=40, max_detections=8)
    detect = tf.function(lambda r: pp.detect(r, anchors, **args), input_signature=[tf.TensorSpec([1, 36, 7])])
    model = _convert(detect)
    ops = _tflite_ops(model)
    assert {"NON_MAX_SUPPRESSION_V5", "TOPK_V2"} <= ops, ops
    assert not any(op.startswith("Flex") or op == "CUSTOM" for op in ops), ops
    rng = np.random.default_rng(7)
    nums = []
    for shift in (-1.5, -4.0, -5.0, -8.0):  # from several detections to none
        x = (rng.normal(size=(1, 36, 7)) * 2).astype(np.float32)
        x[..., 4:] += shift
        got = _tflite_run(model, x)
        want = {k: v.numpy() for k, v in detect(x).items()}
        nums.append(float(want["num_detections"][0]))
        for key in pp.OUTPUT_KEYS:
            assert got[key].shape == want[key].shape, key
            np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)
    assert max(nums) > 1 and min(nums) == 0, nums  # the cases exercise NMS, thresholding and padding

    single = tf.function(lambda r: pp.detect_single(r, score_threshold=0.4), input_signature=[tf.TensorSpec([1, 8])])
    smodel = _convert(single)
    assert not any(op.startswith("Flex") or op == "CUSTOM" for op in _tflite_ops(smodel))
    for _ in range(3):
        x = rng.normal(size=(1, 8)).astype(np.float32)
        got = _tflite_run(smodel, x)
        for key, v in single(x).items():
            np.testing.assert_allclose(got[key], v.numpy(), atol=1e-5, err_msg=key)


def test_onnx_dynamic_batch_agrees():
    tf2onnx = pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    anchors = generate_anchors(SMALL, 16, 16)
    args = dict(score_threshold=0.3, nms_iou=0.5, pre_nms_top_k=40, max_detections=8)
    detect = tf.function(lambda r: pp.detect(r, anchors, **args))
    proto, _ = tf2onnx.convert.from_function(detect, input_signature=[tf.TensorSpec([None, 36, 7], name="raw")], opset=17)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = (np.random.default_rng(8).normal(size=(3, 36, 7)) * 2 - 1.5).astype(np.float32)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"raw": x})))
    want = detect(x)
    for key in pp.OUTPUT_KEYS:
        np.testing.assert_allclose(got[key], want[key].numpy(), atol=1e-5, err_msg=key)


def test_boxes_clipped_to_nothing_are_no_detections():
    raw = _raw({3: [4.0, LOW], 0: [1.0, LOW]})
    raw[0, 3, :2] = [20.0, 20.0]  # centre pushed far past the border: the clipped box has no area
    out = _detect(raw)
    np.testing.assert_array_equal(out["num_detections"], [1.0])
    np.testing.assert_allclose(out["boxes"][0, 0], NMS_ANCHORS[0], atol=1e-6)


def test_equal_scores_rank_by_candidate_index_and_keep_their_own_score():
    """int8 logits tie often; the ranking key breaks ties by (anchor, class) index so every
    runtime keeps the same boxes, while the returned scores stay the model's."""
    import tensorflow as tf

    from tfcnn.tasks.postprocess import TIE_BREAK, detect, tie_break

    bonus = tie_break(16_200)
    assert bonus[0] == np.float32(TIE_BREAK) and bonus[-1] == 0.0
    for level in (0.05, 0.5, 0.99):  # distinct keys at every score level below 1
        keys = (np.float32(level) + bonus).astype(np.float32)
        assert np.all(np.diff(keys) < 0), level
    anchors = np.array([[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7], [0.0, 0.6, 0.2, 0.8]], np.float32)
    raw = np.zeros((1, 3, 4 + 2), np.float32)  # zero offsets, every logit 0: all six scores are 0.5
    out = detect(tf.constant(raw), anchors, score_threshold=0.05, nms_iou=0.5, pre_nms_top_k=6, max_detections=6)
    assert out["num_detections"].numpy().tolist() == [6.0]
    np.testing.assert_array_equal(out["classes"].numpy()[0], [0, 1, 0, 1, 0, 1])
    np.testing.assert_allclose(out["boxes"].numpy()[0], anchors[[0, 0, 1, 1, 2, 2]], atol=1e-6)
    np.testing.assert_array_equal(out["scores"].numpy()[0], np.full(6, 0.5, np.float32))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=40))
def test_float_sigmoid_is_the_sigmoid_without_overflow(values):
    """The post-processing's sigmoid (written so the TFLite converter keeps it float) is
    tf.sigmoid to float32 rounding, finite and in [0, 1] for any logit."""
    import tensorflow as tf

    from tfcnn.tasks.postprocess import float_sigmoid

    x = tf.constant(np.array(values, np.float32))
    got = float_sigmoid(x).numpy()
    assert np.isfinite(got).all() and (got >= 0).all() and (got <= 1).all()
    np.testing.assert_allclose(got, tf.sigmoid(x).numpy(), atol=1e-7, rtol=1e-6)
