"""Box- and mask-aware augmentation: flips are exact, translate/zoom move boxes with the pixels,
masks follow the image pixel for pixel, objects pushed out become PAD rows, unmovable keys are refused."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfcnn.config import AugmentConfig, DataConfig, ScenesConfig
from tfcnn.data import box_augment as ba
from tfcnn.data import scenes
from tfcnn.data.boxes import PAD, UNMOVABLE_AUGMENTS
from tfcnn.errors import ConfigError

FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def affine(b: int, hflip=False, vflip=False, scale=1.0, ty=0.0, tx=0.0, zoomed=None, shifted=None) -> ba.Affine:
    return ba.Affine(
        tf.fill([b], hflip),
        tf.fill([b], vflip),
        tf.fill([b], tf.constant(scale, tf.float32)),
        tf.tile(tf.constant([[ty, tx]], tf.float32), [b, 1]),
        zoomed if zoomed is not None else scale != 1.0,
        shifted if shifted is not None else (ty != 0.0 or tx != 0.0),
    )


@pytest.fixture(scope="module")
def one_object_scenes():
    cfg = ScenesConfig(num_train=32, num_test=1, size=64, min_objects=1, max_objects=1, min_scale=0.8, max_scale=1.4)
    train, _ = scenes.shapes_scenes(cfg, 3)
    return train


_f = st.floats(0, 0.5, width=32, allow_subnormal=False)  # TF flushes subnormals to 0
_side = st.floats(0.015625, 0.5, width=32)
boxes_strategy = st.lists(st.tuples(_f, _f, _side, _side), min_size=1, max_size=4)  # (ymin, xmin, height, width)


@FEW
@given(boxes_strategy)
def test_hflip_maps_boxes_exactly(raw):
    rows = np.array([[y, x, y + h, x + w, k % 3] for k, (y, x, h, w) in enumerate(raw)], np.float32)
    labels = np.full((1, 5, 5), PAD, np.float32)
    labels[0, : len(rows)] = rows
    out = ba.transform_boxes(labels, affine(1, hflip=True)).numpy()[0]
    expect = np.stack([rows[:, 0], 1 - rows[:, 3], rows[:, 2], 1 - rows[:, 1], rows[:, 4]], 1)
    assert np.array_equal(out[: len(rows)], expect)
    assert (out[len(rows) :] == PAD).all()
    vout = ba.transform_boxes(labels, affine(1, vflip=True)).numpy()[0]
    assert np.array_equal(vout[: len(rows)], np.stack([1 - rows[:, 2], rows[:, 1], 1 - rows[:, 0], rows[:, 3], rows[:, 4]], 1))


def test_flips_move_images_and_masks_pixel_exactly(one_object_scenes):
    img = tf.constant(one_object_scenes.images[:4, ..., None], tf.float32)
    msk = tf.constant(one_object_scenes.masks[:4, ..., None], tf.float32)
    for a, axis in ((affine(4, hflip=True), 2), (affine(4, vflip=True), 1)):
        assert np.array_equal(ba.transform_images(img, a).numpy(), np.flip(img.numpy(), axis))
        assert np.array_equal(ba.transform_images(msk, a, "NEAREST").numpy(), np.flip(msk.numpy(), axis))


@FEW
@given(
    st.booleans(),
    st.booleans(),
    st.floats(0.75, 1.25),
    st.floats(-0.2, 0.2),
    st.floats(-0.2, 0.2),
)
def test_translate_zoom_box_matches_the_moved_mask(one_object_scenes, hflip, vflip, scale, ty, tx):
    """Objects whose moved box is still wholly inside the image (a clipped amodal box of a circle or
    triangle is legitimately larger than its visible pixels). Triangles get 1.5 px more: zooming
    out, nearest sampling can skip apex rows thinner than 1/scale pixels."""
    a = affine(32, hflip, vflip, scale, ty, tx, zoomed=True, shifted=True)
    masks = ba.transform_images(tf.constant(one_object_scenes.masks[..., None], tf.float32), a, "NEAREST").numpy()[..., 0]
    boxes = ba.transform_boxes(one_object_scenes.boxes, a).numpy()
    checked = 0
    for mask, lab in zip(masks, boxes):
        if lab[0, 4] < 0 or lab[0, :4].min() <= 0 or lab[0, :4].max() >= 1:
            continue  # pushed out (PAD) or clipped
        tb = scenes.tight_box(mask > 0)
        assert tb is not None
        tol = 1.0 if lab[0, 4] < 2 else 2.5
        assert np.abs(np.array(tb) - lab[0, :4] * 64).max() <= tol + 1e-4, (tb, lab[0, :4] * 64)
        checked += 1
    assert checked >= 4


def test_objects_pushed_out_become_pad_rows_last():
    labels = np.full((1, 3, 5), PAD, np.float32)
    labels[0, 0] = [0.2, 0.0, 0.4, 0.1, 2]  # at the left edge: a 0.2 shift left leaves nothing
    labels[0, 1] = [0.5, 0.5, 0.7, 0.7, 1]
    out = ba.transform_boxes(labels, affine(1, tx=-0.2)).numpy()[0]
    assert np.allclose(out[0], [0.5, 0.3, 0.7, 0.5, 1], atol=1e-6)
    assert (out[1:] == PAD).all()
    labels[0, 0] = [0.2, 0.0, 0.4, 0.4, 2]  # 0.05 of 0.4 left visible: below MIN_VISIBLE
    out = ba.transform_boxes(labels, affine(1, tx=-0.35)).numpy()[0]
    assert out[0, 4] == 1 and (out[1:] == PAD).all()
    out = ba.transform_boxes(labels, affine(1, tx=-0.2)).numpy()[0]  # half visible: kept, clipped
    assert np.allclose(out[0], [0.2, 0.0, 0.4, 0.2, 2], atol=1e-6)


def test_augmenter_moves_masks_like_images_and_is_seeded(one_object_scenes):
    cfg = AugmentConfig(flip=True, vflip=True)
    aug = ba.build_box_augmenter(cfg, "masks", fill=[0.0], channels=1)
    x = tf.constant(one_object_scenes.images[..., None])
    seed = tf.constant([5, 9], tf.int64)
    out_x, out_m = aug(x, tf.constant(one_object_scenes.images), seed)  # the image as its own "mask"
    assert np.array_equal(out_x.numpy()[..., 0], out_m.numpy())  # flips: bilinear == nearest exactly
    cfg = AugmentConfig(translate=0.15, zoom=0.2, flip=True)
    aug = ba.build_box_augmenter(cfg, "masks", fill=[0.0], channels=1)
    m = tf.constant(one_object_scenes.masks)
    _, out_m = aug(x, m, seed)
    same = ba.draw_affine(cfg, len(one_object_scenes.images), seed)
    again = ba.transform_images(tf.cast(m, tf.float32)[..., None], same, "NEAREST")
    assert np.array_equal(out_m.numpy(), again.numpy()[..., 0].astype(np.uint8))
    assert np.array_equal(aug(x, m, seed)[1].numpy(), out_m.numpy())  # stateless: same seed, same result
    assert not np.array_equal(aug(x, m, tf.constant([5, 10], tf.int64))[1].numpy(), out_m.numpy())


def test_photometric_keys_leave_boxes_alone(one_object_scenes):
    aug = ba.build_box_augmenter(AugmentConfig(brightness=0.3, noise=5.0), "boxes", fill=[0.0], channels=1)
    x = tf.constant(one_object_scenes.images[..., None])
    out_x, out_y = aug(x, tf.constant(one_object_scenes.boxes), tf.constant([1, 2], tf.int64))
    assert np.array_equal(out_y.numpy(), one_object_scenes.boxes)
    assert not np.array_equal(out_x.numpy(), x.numpy())
    assert ba.build_box_augmenter(AugmentConfig(), "boxes") is None


@pytest.mark.parametrize("key", UNMOVABLE_AUGMENTS)
def test_unmovable_keys_refused_in_the_data_stage(key):
    from tfcnn.data.inmemory import from_label_arrays

    value = True if key in ("resized_crop", "augmix") else (2 if key in ("randaugment_ops", "crop_padding") else 0.2)
    cfg = AugmentConfig(**{key: value})
    with pytest.raises(ConfigError) as e:
        ba.build_box_augmenter(cfg, "boxes")
    assert f"data.augment.{key}" in str(e.value) and "\n" not in str(e.value)
    if key == "rotate":  # and through the bundle entry point
        train, test = scenes.shapes_scenes(ScenesConfig(num_train=8, num_test=2, size=32), 0)
        with pytest.raises(ConfigError, match="data.augment.rotate"):
            from_label_arrays(
                DataConfig(augment=cfg), (train.images, train.boxes), (test.images, test.boxes), scenes.SHAPE_CLASSES,
                label_kind="boxes",
            )


def test_train_pipeline_augments_boxes_and_keeps_shapes():
    from tfcnn.data.load import load_data

    aug = AugmentConfig(flip=True, translate=0.1, zoom=0.1, contrast=0.2)
    cfg = DataConfig(source="shapes", scenes=ScenesConfig(num_train=24, num_test=4, size=48), batch_size=8, augment=aug)
    b = load_data(cfg)
    x_spec, y_spec = b.train.element_spec
    assert tuple(x_spec.shape[1:]) == (48, 48, 1) and tuple(y_spec.shape[1:]) == (4, 5)
    first = [(x.numpy(), y.numpy()) for x, y in b.train]
    again = [(x.numpy(), y.numpy()) for x, y in load_data(cfg).train]
    for (x1, y1), (x2, y2) in zip(first, again):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)  # seeded
    for _, y in first:
        real = y[..., 4] >= 0
        assert ((y[real][:, :4] >= 0) & (y[real][:, :4] <= 1)).all()
        pad_after_real = np.diff(real.astype(int), axis=1) > 0  # a real row after a PAD row
        assert not pad_after_real.any()
    val_y = np.concatenate([y.numpy() for _, y in b.val])
    assert np.array_equal(val_y, b.arrays["val"][1])  # val is never augmented


@pytest.mark.parametrize("labels", ["boxes", "masks"])
def test_augment_preview_draws_labels_that_follow_the_flip(labels):
    """The preview of box / mask data paints the labels in, from the label-moving augmenter:
    with flip only, every draw is the original painted image or its exact mirror, and both occur."""
    from tfcnn.data.load import load_data
    from tfcnn.vis.augment_preview import paint_boxes, preview_samples

    cfg = DataConfig(source="shapes", scenes=ScenesConfig(num_train=24, num_test=4, size=48, labels=labels),
                     batch_size=8, augment=AugmentConfig(flip=True))
    b = load_data(cfg)
    images, captions = preview_samples(cfg, b, n=4, draws=6)
    assert images.shape == (4 * 7, 48, 48, 3) and images.dtype == np.uint8 and len(captions) == 28
    grid = images.reshape(4, 7, 48, 48, 3)
    x = b.arrays["train"][0][:4]
    mirrored = 0
    for row, plain in zip(grid, x):
        original = row[0]
        assert (original != np.repeat(plain, 3, -1)).any()  # the labels are painted in
        for draw in row[1:]:
            flipped = np.array_equal(draw, original[:, ::-1])
            assert flipped or np.array_equal(draw, original)
            mirrored += flipped
    assert 0 < mirrored < 24
    one = np.zeros((8, 8, 1), np.uint8)
    box = np.array([[0.25, 0.125, 0.75, 0.5, 0.0], [PAD] * 5], np.float32)  # rows 2..5, columns 1..3
    painted = paint_boxes(one, box, np.array([[0, 0, 0], [255, 0, 0]], np.uint8))[..., 0] > 0
    expect = np.zeros((8, 8), bool)
    expect[2, 1:4] = expect[5, 1:4] = expect[2:6, 1] = expect[2:6, 3] = True
    assert np.array_equal(painted, expect)
