"""Augmentation (issue 13): each op's effect, not only that pixels changed; mixing and soft labels;
seeding; train split only; both engines on mixed labels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfcnn.config import AugmentConfig, from_dict
from tfcnn.data import augment_ops as ops
from tfcnn.data.augment import build_augmenter, check_channels, image_ops
from tfcnn.data.bundle import make_bundle
from tfcnn.data.mixing import build_mixer, cutmix, cutmix_box, mixup
from tfcnn.errors import ConfigError

SEED = tf.constant([3, 4], tf.int64)
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pattern(n: int = 32, h: int = 9, w: int = 9, c: int = 1) -> np.ndarray:
    """An asymmetric image (a ramp plus a bright off-centre pixel), repeated n times, float32."""
    img = np.add.outer(np.arange(h) * 7.0, np.arange(w) * 3.0)
    img[1, 6] = 250.0
    return np.repeat(np.repeat(img[None, :, :, None], c, axis=3), n, axis=0).astype(np.float32)


def run_op(op, x, seed=SEED) -> np.ndarray:
    """Eagerly: hypothesis hands every example a new op, and tracing each would dominate."""
    return op(tf.constant(x), seed).numpy()


def augmenter(cfg: dict, channels: int = 1, fill=None):
    """The configured augmenter, traced once (as tf.data does), uint8 in and out."""
    fn = tf.function(build_augmenter(AugmentConfig(**cfg), fill=fill or [0.0] * channels))
    return lambda x, seed=SEED: fn(tf.constant(x.astype(np.uint8)), seed).numpy()


def augment(cfg: dict, x: np.ndarray, seed=SEED, fill=None) -> np.ndarray:
    return augmenter(cfg, x.shape[-1], fill)(x, seed)


# --------------------------------------------------------------------------- geometric


@pytest.mark.parametrize("key, mirror", [("flip", lambda x: x[:, :, ::-1]), ("vflip", lambda x: x[:, ::-1])])
def test_flip_mirrors_each_image_or_leaves_it(key, mirror):
    x = pattern(64).astype(np.uint8)
    out = augment({key: True}, x)
    same = (out == x).reshape(64, -1).all(1)
    flipped = (out == mirror(x)).reshape(64, -1).all(1)
    assert (same | flipped).all() and same.any() and flipped.any()  # per image, both happen


def test_a_quarter_turn_lands_where_np_rot90_puts_it():
    import keras

    x = pattern(4)
    out = run_op(ops.keras_op(keras.layers.RandomRotation((0.25, 0.25), fill_mode="constant")), x)
    want = np.rot90(x, k=1, axes=(1, 2))  # Keras turns counter-clockwise for a positive factor
    assert np.abs(out - want).max() < 1e-3
    assert np.argwhere(out[0, :, :, 0] == out[0].max()).tolist() == [[2, 1]]  # (1, 6) -> (9-1-6, 1)


def test_a_fixed_translation_moves_the_image_by_whole_pixels_filling_black():
    import keras

    x = pattern(2, 8, 8)
    out = run_op(ops.keras_op(keras.layers.RandomTranslation((0.25, 0.25), (0.25, 0.25), fill_mode="constant")), x)
    assert np.abs(out[:, 2:, 2:] - x[:, :-2, :-2]).max() < 1e-3  # down and right by 2 of 8 pixels
    assert np.abs(out[:, :2]).max() < 1e-3 and np.abs(out[:, :, :2]).max() < 1e-3


@given(pad=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
@FAST
def test_pad_crop_shifts_each_image_by_at_most_pad_and_fills_zeros(pad, seed):
    x = pattern(8) + 1.0  # no zero pixels of its own
    out = run_op(ops.pad_crop(pad), x, tf.constant([seed, 1], tf.int64))
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if np.array_equal(out[i], padded[i, dy : dy + 9, dx : dx + 9])
        ]
        assert hits, "every output is a window of the zero-padded image"


def test_resized_crop_identity_box_and_area_of_a_quarter():
    ramp = np.tile(np.arange(16, dtype=np.float32)[None, None, :, None] * 10, (8, 16, 1, 1))
    whole = run_op(ops.resized_crop([1.0, 1.0], [1.0, 1.0]), ramp)
    assert np.abs(whole - ramp).max() < 1e-3
    quarter = run_op(ops.resized_crop([0.25, 0.25], [1.0, 1.0]), ramp)
    spans = quarter[:, 0, -1, 0] - quarter[:, 0, 0, 0]  # a half-width crop spans half the ramp
    assert np.allclose(spans, 0.5 * 150, atol=1e-3) and len(np.unique(quarter[:, 0, 0, 0])) > 1


# --------------------------------------------------------------------------- photometric


def test_brightness_adds_one_offset_per_image_and_noise_has_the_asked_std():
    x = np.full((16, 8, 8, 1), 128, np.uint8)
    out = augment({"brightness": 0.2}, x).astype(np.float32) - 128
    per_image = out.reshape(16, -1)
    assert (per_image == per_image[:, :1]).all() and np.abs(per_image).max() <= 0.2 * 255 + 1
    assert len(np.unique(per_image[:, 0])) > 4
    noisy = run_op(ops.gaussian_noise(10.0), np.full((64, 16, 16, 1), 128.0, np.float32)) - 128
    assert abs(noisy.mean()) < 0.5 and abs(noisy.std() - 10.0) < 0.5


def test_texture_puts_each_image_on_the_scenes_noise_and_keeps_its_ink():
    from tfcnn.data.scenes import INK_THRESHOLD, background

    x = np.zeros((32, 28, 28, 3), np.uint8)
    x[:, 8:20, 8:20] = 200  # ink
    x[:, 2, 2] = INK_THRESHOLD // 2  # a faint pixel: half item, half texture
    out = augment({"texture": 0.15}, x).astype(np.float32)
    assert (out[:, 8:20, 8:20] == 200).all()  # ink is never touched
    assert (out == out[..., :1]).all()  # one texture per image, shared by its channels
    bg = out[:, 20:, 20:, 0]
    assert bg.min() >= 0 and bg.max() <= 0.15 * 255 + 0.5 and len({img.tobytes() for img in bg}) == 32
    scene = background(96, 0.15, np.random.default_rng(0))  # the scenes' canvas: same level and spread
    assert abs(bg.mean() - scene.mean()) < 1.5 and abs(bg.std() - scene.std()) < 1.5
    right = np.corrcoef(out[:, :, :-1, 0][:, 20:, 20:].ravel(), out[:, :, 1:, 0][:, 20:, 20:].ravel())[0, 1]
    assert right > 0.6  # coarse cells, bilinearly smooth: neighbours agree (grain alone would give ~0)
    plain = x.copy()
    plain[:, 2, 2] = 0  # the same seed draws the same texture: here it shows alone
    texture_there = augment({"texture": 0.15}, plain).astype(np.float32)[:, 2, 2, 0]
    blend = INK_THRESHOLD // 4 + texture_there / 2  # alpha 0.5: 0.5 * 16 + 0.5 * texture
    assert np.abs(out[:, 2, 2, 0] - blend).max() <= 1.0 and texture_there.std() > 1
    assert np.array_equal(augment({"texture": 0.15}, x), augment({"texture": 0.15}, x))


def test_colour_ops_keep_gray_images_gray_and_grayscale_equalises_channels():
    gray = np.repeat(pattern(8), 3, axis=3).astype(np.uint8)
    out = augment({"hue": 0.5, "saturation": 0.8}, gray)
    assert np.abs(out.astype(int) - gray).max() <= 1  # no colour to turn or saturate
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (32, 8, 8, 3), dtype=np.uint8)
    out = augment({"grayscale": 1.0}, colour)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_colour_ops_on_one_channel_are_one_clear_config_error():
    with pytest.raises(ConfigError, match=r"data.augment.hue needs 3-channel images .* set data.channels = 3"):
        check_channels(AugmentConfig(hue=0.1), 1)
    with pytest.raises(ConfigError, match="data.augment.saturation needs colour images but data.channels = 1"):
        from_dict({"data": {"channels": 1, "augment": {"saturation": 0.2}}})
    with pytest.raises(ConfigError, match="data.augment.grayscale"):
        build_augmenter(AugmentConfig(grayscale=0.5), fill=[0.0])


def test_blur_spreads_a_bright_pixel_keeping_its_mass():
    x = np.zeros((8, 11, 11, 1), np.float32)
    x[:, 5, 5] = 200.0
    out = augment({"blur": 1.0, "blur_sigma": 1.0}, x).astype(np.float32)
    assert (out[:, 5, 5, 0] < 60).all() and (out[:, 5, 6, 0] > 10).all()  # sigma 1: ~16% at the centre
    assert np.allclose(out.reshape(8, -1).sum(1), 200, atol=12)  # mass kept (up to rounding to uint8)
    assert np.array_equal(augment({"blur": 1e-9}, x), x)  # the probability per image is blur


# --------------------------------------------------------------------------- erasing / policies


@given(lo=st.floats(0.02, 0.3), width=st.floats(0.0, 0.3), seed=st.integers(0, 2**31 - 1))
@FAST
def test_erasing_paints_one_box_inside_the_image_of_the_asked_area(lo, width, seed):
    hi = lo + width
    x = np.full((16, 20, 20, 1), 200.0, np.float32)
    out = run_op(ops.erase(1.0, [lo, hi], [0.5, 2.0], "mean", [7.0]), x, tf.constant([seed, 2], tf.int64))
    for img in out[..., 0]:
        rows, cols = np.nonzero(img == 7.0)
        assert len(rows) and ((img == 7.0) | (img == 200.0)).all()
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert h * w == len(rows)  # a solid rectangle, inside the image by construction
        # rounding each side to whole pixels moves the area by at most about one row and column
        assert lo * 400 - (h + w) - 1 <= h * w <= hi * 400 + (h + w) + 1


def test_erasing_probability_zero_and_cutout_still_work_from_the_config():
    x = np.full((16, 12, 12, 1), 200, np.uint8)
    assert np.array_equal(augment({"erasing": 0.0, "flip": True}, x), x)
    out = augment({"cutout": 0.5}, x, fill=[9.0])
    assert ((out == 9).reshape(16, -1).sum(1) >= 9).all()  # one (possibly clipped) 6x6 square each


def test_randaugment_picks_ops_per_image_from_keras_ops_and_is_seeded():
    import keras

    assert len(keras.layers.RandAugment()._AUGMENT_LAYERS) == 11  # the Keras 3.15 attribute RandAugment reads
    x = np.repeat(pattern(1), 64, axis=0).astype(np.uint8)
    fn = augmenter({"randaugment_ops": 2, "randaugment_magnitude": 0.3})
    a, b, c = fn(x), fn(x), fn(x, tf.constant([3, 5], tf.int64))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    distinct = {img.tobytes() for img in a}
    assert len(distinct) > 16  # identical inputs, different ops and magnitudes per image


def test_augmix_blends_chains_with_the_original_per_image():
    x = np.repeat(pattern(1), 32, axis=0).astype(np.uint8)
    out = augment({"augmix": True, "augmix_chains": 2, "augmix_depth": 1}, x)
    assert out.dtype == np.uint8 and len({img.tobytes() for img in out}) > 8
    corr = [np.corrcoef(img.ravel(), x[0].ravel())[0, 1] for img in out.astype(np.float32)]
    assert np.median(corr) > 0.5  # a blend with the original, not a different image


def test_every_op_is_stateless_in_a_tf_data_map():
    cfg = AugmentConfig(
        flip=True, vflip=True, rotate=0.1, zoom=0.1, translate=0.1, shear=0.1, crop_padding=2, resized_crop=True,
        brightness=0.1, contrast=0.1, saturation=0.2, hue=0.1, grayscale=0.2, noise=2.0, blur=0.3, texture=0.1,
        randaugment_ops=1, augmix=True, augmix_chains=1, augmix_depth=1, erasing=0.5, cutout=0.2, mixup=0.2, cutmix=1.0,
    )  # fmt: skip
    assert len(image_ops(cfg)) == 20 and set(cfg.summary()) >= {"mixup", "cutmix", "erasing_area", "texture_cell"}
    aug, mix = build_augmenter(cfg, fill=[1.0, 2.0, 3.0]), build_mixer(cfg, 4)
    fn = tf.function(lambda x, y, s: mix(aug(x, s), y, s))
    spec = (tf.TensorSpec([None, 12, 12, 3], tf.uint8), tf.TensorSpec([None], tf.int32), tf.TensorSpec([2], tf.int64))
    graph = fn.get_concrete_function(*spec).graph
    assert not graph.variables and not graph.captures  # no SeedGenerator state: the seed decides
    x = np.random.default_rng(1).integers(0, 255, (8, 12, 12, 3), dtype=np.uint8)
    y = np.arange(8, dtype=np.int32) % 4
    first, again = fn(x, y, SEED), fn(x, y, SEED)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])


# --------------------------------------------------------------------------- mixing


@given(lam=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4), seed=st.integers(0, 2**31 - 1))
@FAST
def test_cutmix_lambda_is_one_minus_the_clipped_box_area(lam, seed):
    h, w = 10, 14
    x = np.random.default_rng(seed).uniform(0, 255, (4, h, w, 2)).astype(np.float32)
    y = tf.one_hot([0, 1, 2, 3], 4)
    perm = tf.constant([1, 2, 3, 0])
    box = cutmix_box(tf.constant(lam, tf.float32), h, w, tf.constant([seed, 0], tf.int64))
    images, labels, got = (t.numpy() for t in cutmix(tf.constant(x), y, box, perm))
    top, left, bh, bw = (t.numpy() for t in box)
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    assert np.allclose(got, 1 - bh * bw / (h * w))
    for i in range(4):
        inside = np.zeros((h, w), bool)
        inside[top[i] : top[i] + bh[i], left[i] : left[i] + bw[i]] = True
        assert np.array_equal(images[i][inside], x[perm.numpy()[i]][inside])
        assert np.array_equal(images[i][~inside], x[i][~inside])
    assert np.allclose(labels.sum(1), 1.0)
    assert np.allclose(labels[np.arange(4), np.arange(4)] + labels[np.arange(4), perm.numpy()], 1.0)


def test_mixup_with_lambda_one_is_the_identity_and_zero_is_the_partner():
    x = tf.constant(pattern(4) + np.arange(4)[:, None, None, None] * 5)
    y = tf.one_hot([0, 1, 2, 3], 4)
    perm = tf.constant([3, 2, 1, 0])
    same_x, same_y = mixup(x, y, tf.ones([4]), perm)
    assert np.array_equal(same_x.numpy(), x.numpy()) and np.array_equal(same_y.numpy(), y.numpy())
    other_x, other_y = mixup(x, y, tf.zeros([4]), perm)
    assert np.array_equal(other_x.numpy(), tf.gather(x, perm).numpy())
    half_x, half_y = mixup(x, y, tf.fill([4], 0.25), perm)
    assert np.allclose(half_y.numpy().sum(1), 1) and np.allclose(half_y.numpy()[0], [0.25, 0, 0, 0.75])


@given(
    mixup_alpha=st.sampled_from([0.0, 0.2, 1.0]),
    cutmix_alpha=st.sampled_from([0.0, 1.0]),
    seed=st.integers(0, 2**31 - 1),
)
@FAST
def test_mixed_labels_are_probability_vectors_and_the_seed_decides(mixup_alpha, cutmix_alpha, seed):
    cfg = AugmentConfig(mixup=mixup_alpha, cutmix=cutmix_alpha)
    mix = build_mixer(cfg, 5)
    if mix is None:
        assert not (mixup_alpha or cutmix_alpha)
        return
    x = np.random.default_rng(0).integers(0, 255, (16, 8, 8, 1), dtype=np.uint8)
    y = np.arange(16, dtype=np.int32) % 5
    s = tf.constant([seed, 9], tf.int64)
    xi, yi = (t.numpy() for t in mix(x, y, s))
    assert xi.dtype == np.uint8 and yi.shape == (16, 5) and (yi >= 0).all()
    assert np.allclose(yi.sum(1), 1.0, atol=1e-5)
    again = mix(x, y, s)
    assert np.array_equal(again[0].numpy(), xi) and np.array_equal(again[1].numpy(), yi)


def test_mixing_probability_zero_leaves_the_batch_with_one_hot_labels():
    mix = build_mixer(AugmentConfig(mixup=1.0, mixup_prob=0.0, cutmix=1.0, cutmix_prob=1e-9), 3)
    x = np.random.default_rng(0).integers(0, 255, (8, 6, 6, 1), dtype=np.uint8)
    y = np.arange(8, dtype=np.int32) % 3
    xi, yi = mix(x, y, SEED)
    assert np.array_equal(xi.numpy(), x) and np.array_equal(yi.numpy(), np.eye(3)[y])


# --------------------------------------------------------------------------- the pipeline


def bundle(aug: dict, seed: int = 42, n: int = 96, channels: int = 1):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (n, 12, 12, channels), dtype=np.uint8)
    y = (np.arange(n) % 3).astype(np.int32)
    cfg = from_dict({"data": {"batch_size": 16, "seed": seed, "val_fraction": 0.25, "augment": aug}})
    return make_bundle(cfg.data, (x, y), (x[:30], y[:30]), ["a", "b", "c"], "numpy:test")


def epoch(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(xb.numpy(), yb.numpy()) for xb, yb in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_only_the_train_split_is_augmented_and_the_seed_decides():
    aug = {"flip": True, "translate": 0.1, "mixup": 0.2, "cutmix": 1.0, "erasing": 0.5}
    plain, a, b, other = bundle({}), bundle(aug), bundle(aug), bundle(aug, seed=7)
    assert a.train.element_spec[1].shape.as_list() == [None, 3] and a.train.element_spec[1].dtype == tf.float32
    for split in ("val", "test"):
        assert getattr(a, split).element_spec[1].dtype == tf.int32
        for got, want in zip(epoch(getattr(a, split)), epoch(getattr(plain, split))):
            assert np.array_equal(got, want)  # never augmented, never mixed
    assert np.array_equal(a.arrays["train"][0], plain.arrays["train"][0])  # verification / export data
    xa, ya = epoch(a.train)
    xb, yb = epoch(b.train)
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)  # same seed, same batches
    assert not np.array_equal(xa, epoch(other.train)[0])  # another seed, other batches
    assert not np.array_equal(xa, epoch(a.train)[0])  # redrawn every epoch
    assert np.allclose(ya.sum(1), 1.0, atol=1e-5)


def test_mixing_is_refused_for_a_task_without_soft_labels():
    from tfcnn.tasks import TASKS, _check

    no_soft = [name for name, task in TASKS.items() if not task.soft_labels]
    if not no_soft:
        pytest.skip("every registered task learns from soft labels")
    cfg = from_dict({"task": no_soft[0], "data": {"augment": {"cutmix": 1.0}}})
    with pytest.raises(ConfigError, match="data.augment.cutmix mixes labels"):
        _check(cfg)


def test_soft_label_loss_composes_with_smoothing_and_accuracy_uses_the_argmax():
    from tfcnn.tasks import get_task

    task = get_task("classification")
    logits = tf.constant([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    soft = tf.constant([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]])
    got = task.loss_fn(3, 0.1)(soft, logits).numpy()
    smoothed = soft.numpy() * 0.9 + 0.1 / 3
    want = -(smoothed * tf.nn.log_softmax(logits).numpy()).sum(1)
    assert np.allclose(got, want, atol=1e-5)
    hard = task.loss_fn(3, 0.0)(tf.constant([0, 2]), logits).numpy()
    assert np.allclose(task.loss_fn(3, 0.0)(tf.one_hot([0, 2], 3), logits).numpy(), hard, atol=1e-6)
    (metric,) = task.keras_metrics(0.0, soft=True)
    metric.update_state(soft, logits)  # argmax labels [0, 2], predictions [0, 2]
    metric.update_state(tf.constant([1, 2]), logits)  # class ids work in the same metric: 1 of 2
    assert math.isclose(float(metric.result()), 0.75)


@pytest.mark.parametrize("engine", ["tape", "fit"])
def test_both_engines_train_on_mixup_and_cutmix_with_finite_loss(engine, tmp_path):
    import keras

    from tfcnn.models import build_model
    from tfcnn.train import train

    cfg = from_dict(
        {
            "data": {"batch_size": 16, "val_fraction": 0.25, "augment": {"mixup": 0.4, "cutmix": 1.0, "flip": True}},
            "model": {"name": "tiny_cnn"},
            "train": {"engine": engine, "epochs": 2, "label_smoothing": 0.1, "tensorboard": False, "steps_per_execution": 2},
        }
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (96, 12, 12, 1), dtype=np.uint8)
    y = (np.arange(96) % 3).astype(np.int32)
    b = make_bundle(cfg.data, (x, y), (x[:30], y[:30]), ["a", "b", "c"], "numpy:test")
    info = b.info
    result = train(cfg, b, Path(tmp_path), lambda: build_model(cfg.model, info.input_shape, 3, info.mean, info.std))
    h = result.history
    assert all(math.isfinite(v) for v in h["loss"] + h["val_loss"])
    assert all(0.0 <= v <= 1.0 for v in h["accuracy"] + h["val_accuracy"])
    # the trained (and exported) model holds no augmentation: it happens in tf.data only
    random_layers = [l for l in result.model._flatten_layers() if "Random" in type(l).__name__ or "Mix" in type(l).__name__]
    assert not random_layers
    probe = x[:8].astype(np.float32)
    assert np.array_equal(result.model(probe, training=False).numpy(), result.model(probe, training=False).numpy())
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    assert np.allclose(reloaded(probe).numpy(), result.model(probe, training=False).numpy(), atol=1e-5)


# --------------------------------------------------------------------------- preview and report


def test_augment_preview_cli_writes_a_grid_and_the_report_shows_it(npz_path, tmp_path):
    from PIL import Image

    from tfcnn import config
    from tfcnn.cli import main
    from tfcnn.run import Run
    from tfcnn.vis.augment_preview import preview_indices
    from tfcnn.vis.report import RunContext, augmentation

    assert preview_indices(np.array([2, 0, 0, 1, 2, 1]), 4).tolist() == [1, 3, 0, 2]  # the classes in turn
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        f'name = "prev"\n[data]\nsource = "numpy:{npz_path}"\n[data.augment]\nflip = true\nmixup = 0.4\n'
    )
    out = tmp_path / "grid.png"
    assert main(["augment-preview", str(pipeline), "--out", str(out), "--n", "3", "--draws", "2"]) == 0
    assert Image.open(out).size[0] > 200
    assert main(["augment-preview", str(pipeline), "--out", str(out), "--set", "data.augment.flip=false",
                 "--set", "data.augment.mixup=0"]) == 2  # nothing to preview: one error line, exit 2

    run = Run.create(tmp_path / "run")
    config.save(config.load(pipeline), run.path("config"))
    html = augmentation(RunContext(run, {"files": {}, "unavailable": {}}))
    assert "Training augmentation" in html and "<img" in html and (run.path("plots") / "augment_preview.png").is_file()
    plain = Run.create(tmp_path / "plain")
    config.save(config.load(pipeline, ["data.augment.flip=false", "data.augment.mixup=0"]), plain.path("config"))
    assert augmentation(RunContext(plain, {"files": {}, "unavailable": {}})) == ""  # no augmentation, no grid
