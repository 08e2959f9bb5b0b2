"""Segmentation maths: the per-image losses (soft Dice, CE, focal, Dice + CE, the Keras loss class)
and the numpy metrics (confusion, IoU / Dice, pixel accuracy, boundary F1, pixel agreement).

Small hand-made masks with exact answers; kept tiny for the shared 2-core CPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tfcnn.errors import ConfigError
from tfcnn.tasks import segmentation_metrics as sm


def one_hot_logits(mask: np.ndarray, classes: int, scale: float = 1.0) -> np.ndarray:
    """Logits whose argmax is `mask`: `scale` on the mask's class, 0 elsewhere."""
    return (np.eye(classes, dtype="float32")[mask] * scale).astype("float32")


def square_mask(size: int = 16, box: tuple[int, int, int, int] = (4, 4, 12, 12), cls: int = 1, n: int = 1) -> np.ndarray:
    m = np.zeros((n, size, size), np.int64)
    y0, x0, y1, x1 = box
    m[:, y0:y1, x0:x1] = cls
    return m


# --------------------------------------------------------------------------- metrics


def test_confusion_matches_a_loop_and_counts_every_pixel() -> None:
    rng = np.random.default_rng(0)
    p, t = rng.integers(0, 4, (3, 8, 9)), rng.integers(0, 4, (3, 8, 9))
    cm = sm.confusion(p, t, 4)
    ref = np.zeros((4, 4), np.int64)
    for a, b in zip(t.ravel(), p.ravel()):
        ref[a, b] += 1
    assert cm.dtype == np.int64 and cm.shape == (4, 4)
    np.testing.assert_array_equal(cm, ref)
    assert cm.sum() == p.size
    with pytest.raises(ValueError, match="outside 0..3"):
        sm.confusion(p + 1, t, 4)
    with pytest.raises(ValueError, match="differ in shape"):
        sm.confusion(p[:, :4], t, 4)


def test_perfect_and_disjoint_masks() -> None:
    t = square_mask()
    cm = sm.confusion(t, t, 2)
    assert sm.mean_iou(cm) == 1.0 and sm.mean_dice(cm) == 1.0 and sm.pixel_accuracy(cm) == 1.0
    assert sm.boundary_f1(t, t) == 1.0 and sm.pixel_agreement(t, t) == 1.0
    # the prediction's object is elsewhere: foreground IoU / Dice / boundary F1 all 0
    p = square_mask(box=(0, 0, 2, 2))
    cm = sm.confusion(p, t, 2)
    assert sm.per_class_iou(cm)[1] == 0.0 and sm.mean_dice(cm) == 0.0
    assert sm.boundary_f1(p, t, tolerance_px=1) == 0.0


def test_partial_overlap_exact_fractions() -> None:
    # true: columns 0..7 of row block are class 1 (8x8 = 64 px); pred shifted by 4 columns
    t = square_mask(box=(0, 0, 8, 8))
    p = square_mask(box=(0, 4, 8, 12))
    cm = sm.confusion(p, t, 2)
    # tp = 32, fp = 32, fn = 32 for class 1; IoU = 32 / 96, Dice = 64 / 128
    assert sm.per_class_iou(cm)[1] == pytest.approx(1 / 3)
    assert sm.per_class_dice(cm)[1] == pytest.approx(0.5)
    assert sm.mean_dice(cm) == pytest.approx(0.5)
    # background: 256 - 96 = 160 tp, 32 fp, 32 fn -> 160 / 224
    assert sm.per_class_iou(cm)[0] == pytest.approx(160 / 224)
    assert sm.mean_iou(cm) == pytest.approx((1 / 3 + 160 / 224) / 2)
    assert sm.mean_iou(cm, foreground_only=True) == pytest.approx(1 / 3)
    assert sm.pixel_accuracy(cm) == pytest.approx((256 - 64) / 256)
    assert sm.pixel_agreement(p, t) == pytest.approx((256 - 64) / 256)
    # Dice = 2 IoU / (1 + IoU) per class
    iou, dice = sm.per_class_iou(cm), sm.per_class_dice(cm)
    np.testing.assert_allclose(dice, 2 * iou / (1 + iou))


def test_absent_class_is_nan_and_skipped_by_the_means() -> None:
    t = square_mask(cls=2)
    cm = sm.confusion(t, t, 4)  # classes 1 and 3 absent from both
    iou, dice = sm.per_class_iou(cm), sm.per_class_dice(cm)
    assert np.isnan(iou[[1, 3]]).all() and np.isnan(dice[[1, 3]]).all()
    assert sm.mean_iou(cm) == 1.0 and sm.mean_dice(cm) == 1.0
    empty = sm.confusion(np.zeros((1, 4, 4), int), np.zeros((1, 4, 4), int), 3)
    assert math.isnan(sm.mean_dice(empty)) and sm.mean_iou(empty) == 1.0


def test_nan_masks_raise_naming_the_image() -> None:
    p = np.zeros((3, 4, 4), np.float32)
    p[2, 1, 1] = np.nan
    t = np.zeros((3, 4, 4), np.int64)
    for fn in (lambda: sm.confusion(p, t, 2), lambda: sm.pixel_agreement(p, t), lambda: sm.boundary_f1(p, t)):
        with pytest.raises(ValueError, match="image 2 has NaN"):
            fn()


def test_the_course_example_512_with_100_object_pixels() -> None:
    t = np.zeros((1, 512, 512), np.int64)
    t[0, 100:110, 200:210] = 1  # 100 object pixels
    p = np.zeros_like(t)  # all background
    cm = sm.confusion(p, t, 2)
    assert sm.pixel_accuracy(cm) == pytest.approx(1 - 100 / 512**2)  # 99.96%
    assert sm.mean_dice(cm) == 0.0 and sm.per_class_iou(cm)[1] == 0.0


def test_boundary_f1_tolerance_and_scipy_cross_check() -> None:
    t = square_mask(size=32, box=(8, 8, 24, 24))
    p = square_mask(size=32, box=(9, 8, 25, 24))  # shifted one pixel down
    assert sm.boundary_f1(p, t, tolerance_px=0) < 0.6
    assert sm.boundary_f1(p, t, tolerance_px=1) == 1.0
    # boundaries: the 16x16 square's ring of 60 pixels; the border is no boundary
    assert sm.boundaries(t == 1).sum() == 60
    assert not sm.boundaries(np.ones((1, 5, 5), bool)).any()
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(1)
    a = rng.random((1, 24, 24)) < 0.2
    for r in (1, 2, 3):
        ref = ndimage.distance_transform_edt(~a[0]) <= r
        np.testing.assert_array_equal(sm.dilate(a, r)[0], ref)


# --------------------------------------------------------------------------- losses


def test_dice_all_background_is_zero_and_perfect_is_one() -> None:
    from tfcnn.tasks import segmentation_losses as sl

    t = np.zeros((1, 64, 64), np.int64)
    t[0, 10:20, 10:20] = 1  # 100 positive pixels
    background = one_hot_logits(np.zeros_like(t), 2, 100.0)
    dice = np.asarray(sl.soft_dice(t, background, smooth=0.0))
    assert dice.shape == (1,) and dice[0] == pytest.approx(0.0, abs=1e-6)
    assert float(sl.soft_dice_loss(t, background, smooth=0.0)[0]) == pytest.approx(1.0, abs=1e-6)
    perfect = one_hot_logits(t, 2, 100.0)
    assert float(sl.soft_dice(t, perfect, smooth=0.0)[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(sl.soft_dice(t, perfect, classes="all", smooth=1.0)[0]) == pytest.approx(1.0, abs=1e-6)


def test_soft_dice_approaches_hard_dice_as_predictions_saturate() -> None:
    from tfcnn.tasks import segmentation_losses as sl

    rng = np.random.default_rng(0)
    t = np.zeros((2, 16, 16), np.int64)
    t[:, 3:11, 4:12] = 1
    t[1, 12:15, 2:14] = 2
    pred = np.where(rng.random(t.shape) < 0.8, t, rng.integers(0, 3, t.shape))  # 80% right
    direction = rng.uniform(0, 0.5, (*t.shape, 3)).astype("float32") + one_hot_logits(pred, 3)
    assert (direction.argmax(-1) == pred).all()
    assert all(set(np.unique(pred[i])) == {0, 1, 2} for i in range(2))  # no absent class (hard: NaN)
    hard = np.array([sm.mean_dice(sm.confusion(pred[i], t[i], 3)) for i in range(2)])
    gaps = [np.abs(np.asarray(sl.soft_dice(t, direction * s, smooth=0.0)) - hard).max() for s in (1, 10, 100)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3


def test_cross_entropy_and_class_weights() -> None:
    import tensorflow as tf

    from tfcnn.tasks import segmentation_losses as sl

    rng = np.random.default_rng(0)
    t = rng.integers(0, 3, (2, 8, 8))
    logits = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    ce = np.asarray(sl.cross_entropy(t, logits))
    ref = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(t, logits, from_logits=True), axis=[1, 2])
    np.testing.assert_allclose(ce, np.asarray(ref), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(sl.cross_entropy(t, logits, [1.0, 1.0, 1.0])), ce, rtol=1e-6)
    # weight 3 on class 2: its pixels' terms triple, the others' stay
    per_pixel = np.asarray(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=t, logits=logits))
    expect = np.where(t == 2, 3.0, 1.0) * per_pixel
    np.testing.assert_allclose(np.asarray(sl.cross_entropy(t, logits, [1, 1, 3])), expect.mean(axis=(1, 2)), rtol=1e-5)
    # focal with gamma 0 is CE, and gamma > 0 is smaller
    np.testing.assert_allclose(np.asarray(sl.focal(t, logits, 0.0)), ce, rtol=1e-5)
    assert (np.asarray(sl.focal(t, logits, 2.0)) < ce).all()
    np.testing.assert_allclose(
        np.asarray(sl.hybrid(t, logits)), ce + np.asarray(sl.soft_dice_loss(t, logits)), rtol=1e-5
    )
    with pytest.raises(ConfigError, match="2 entries.*3 output classes"):
        sl.cross_entropy(t, logits, [1.0, 2.0])


@pytest.mark.parametrize("kind", ["dice", "ce", "dice_ce", "focal"])
def test_gradients_finite_even_when_saturated(kind: str) -> None:
    import tensorflow as tf

    from tfcnn.tasks import segmentation_losses as sl

    t = np.zeros((2, 8, 8), np.int64)
    t[0, 2:5, 2:5] = 1
    for scale in (1.0, 1e3):
        logits = tf.Variable(one_hot_logits(t, 3, scale))
        with tf.GradientTape() as tape:
            loss = sl.segmentation_loss(t, logits, {"loss": kind, "dice_smooth": 0.0, "class_weights": [0.5, 1, 2]})
        grad = tape.gradient(loss, logits)
        assert loss.shape == (2,) and np.isfinite(np.asarray(loss)).all()
        assert np.isfinite(np.asarray(grad)).all()


def test_settings_and_dispatch() -> None:
    from tfcnn.config import SegmentationConfig
    from tfcnn.tasks import segmentation_losses as sl

    assert sl.settings_dict(SegmentationConfig(loss="focal"))["loss"] == "focal"
    with pytest.raises(ConfigError, match="not one of"):
        sl.settings_dict({"loss": "jaccard"})
    with pytest.raises(ConfigError, match="unknown"):
        sl.settings_dict({"los": "dice"})


def test_keras_loss_round_trip_and_compile(tmp_path) -> None:
    import keras

    from tfcnn.tasks import segmentation_losses as sl

    settings = {"loss": "dice_ce", "class_weights": [0.5, 2.0], "dice_smooth": 0.5, "focal_gamma": 2.0}
    loss = sl.SegmentationLoss(settings)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is type(loss) and again.settings == loss.settings
    rng = np.random.default_rng(0)
    t = rng.integers(0, 2, (2, 8, 8))
    logits = rng.normal(size=(2, 8, 8, 2)).astype("float32")
    expect = np.asarray(sl.segmentation_loss(t, logits, settings)).mean()
    assert float(loss(t, logits)) == pytest.approx(float(expect), rel=1e-5)
    assert float(loss(t[..., None], logits)) == pytest.approx(float(expect), rel=1e-5)  # [B, H, W, 1] masks
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="segmentation")(inputs))
    model.compile(optimizer="adam", loss=loss)
    x = rng.normal(size=(2, 8, 8, 1)).astype("float32")
    model.train_on_batch(x, t)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.loss.settings == loss.settings
