"""Fused batch normalisation: the same numbers as Keras' layer, its kernel really used, plain files."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcnn.config import from_dict
from tfcnn.models import build_model
from tfcnn.models.fused_bn import FusedBatchNormalization, count_fused, with_fused_batch_norm, without_fused_batch_norm


def _compact(activation: str = "relu") -> keras.Model:
    cfg = from_dict({"name": "t", "model": {"name": "compact_cnn", "dropout": 0.0, "l2": 1e-4, "batch_norm": True,
                                             "activation": activation, "options": {"head": "gdconv"}}})
    keras.utils.set_random_seed(0)
    return build_model(cfg.model, (28, 28, 1), 10, [30.0], [60.0])


def _batch(n: int = 32, seed: int = 1):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(0, 255, (n, 28, 28, 1)).astype("float32")), tf.constant(rng.integers(0, 10, n))


def _bn_count(model: keras.Model) -> int:
    return sum(type(layer) is keras.layers.BatchNormalization for layer in model._flatten_layers())


def test_training_step_matches_keras_batch_norm():
    # swish, not relu: an activation within rounding of 0 (the two kernels round differently) would
    # flip a relu mask, and one flipped element moves a channel's summed gradient by ~1%
    plain = _compact("swish")
    fused = with_fused_batch_norm(plain)
    assert count_fused(fused) == _bn_count(plain) == 6 and _bn_count(fused) == 0
    x, y = _batch()
    # inference is the Keras layer's own code
    np.testing.assert_array_equal(plain(x, training=False).numpy(), fused(x, training=False).numpy())
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results = []
    for model in (plain, fused):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            value = loss(y, logits) + tf.add_n(model.losses)
        grads = tape.gradient(value, model.trainable_variables)
        results.append((logits.numpy(), [g.numpy() for g in grads], [w.numpy() for w in model.non_trainable_weights]))
    (l0, g0, s0), (l1, g1, s1) = results
    assert np.max(np.abs(l0 - l1)) < 1e-4 * max(1.0, np.max(np.abs(l0)))
    for a, b in zip(g0, g1):
        assert np.linalg.norm(a - b) <= 1e-3 * np.linalg.norm(a) + 1e-7
    # the moving statistics took the same step (the biased batch variance, as Keras' layer)
    for a, b in zip(s0, s1):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_layer_gradients_match_keras_batch_norm():
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(2.0, 3.0, (8, 6, 6, 5)).astype("float32"))
    w = tf.constant(rng.normal(size=(8, 6, 6, 5)).astype("float32"))
    plain, fused = keras.layers.BatchNormalization(momentum=0.9), FusedBatchNormalization(momentum=0.9)
    plain.build(x.shape)
    fused.build(x.shape)
    plain.gamma.assign(rng.uniform(0.5, 2.0, 5).astype("float32"))
    fused.set_weights(plain.get_weights())
    got = []
    for layer in (plain, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            value = tf.reduce_sum(w * y + 0.1 * y**2)
        grads = tape.gradient(value, [x, layer.gamma, layer.beta])
        got.append([g.numpy() for g in grads] + [layer.moving_mean.numpy(), layer.moving_variance.numpy()])
    for a, b in zip(*got):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_the_fused_kernel_is_in_the_training_graph_only():
    fused = with_fused_batch_norm(_compact())
    x, _ = _batch(8)

    def ops(training: bool) -> set[str]:
        fn = tf.function(lambda t: fused(t, training=training)).get_concrete_function(tf.TensorSpec(x.shape, tf.float32))
        return {op.type for op in fn.graph.get_operations()}

    assert any(t.startswith("FusedBatchNorm") for t in ops(True))
    assert not any(t.startswith("FusedBatchNorm") for t in ops(False))


@pytest.mark.parametrize("case", ["dense_input", "frozen", "renorm"])
def test_layers_the_kernel_does_not_cover_run_keras_code(case):
    rng = np.random.default_rng(2)
    shape = (16, 6) if case == "dense_input" else (4, 5, 5, 3)
    x = tf.constant(rng.normal(size=shape).astype("float32"))
    kwargs = {"renorm": True} if case == "renorm" else {}
    plain, fused = keras.layers.BatchNormalization(**kwargs), FusedBatchNormalization(**kwargs)
    for layer in (plain, fused):
        layer.build(shape)
        layer.trainable = case != "frozen"
    fused.set_weights(plain.get_weights())
    np.testing.assert_array_equal(plain(x, training=True).numpy(), fused(x, training=True).numpy())
    for a, b in zip(plain.get_weights(), fused.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_one_value_per_channel_keeps_the_moving_variance_finite():
    layer = FusedBatchNormalization(momentum=0.5)
    x = tf.constant([[[[3.0, -1.0]]]])  # one image of 1x1: the batch variance is 0 (no spread)
    layer(x, training=True)
    mean, var = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    assert np.all(np.isfinite(var)) and np.allclose(var, 0.5) and np.allclose(mean, [1.5, -0.5])


def test_round_trip_leaves_plain_keras_layers_nested_models_included(tmp_path):
    inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()], name="inner")
    inputs = keras.Input((8, 8, 3))
    x = inner(inputs)
    x = keras.layers.BatchNormalization(name="outer_bn")(keras.layers.Conv2D(4, 3)(x))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    fused = with_fused_batch_norm(model)
    assert count_fused(fused) == 2
    back = without_fused_batch_norm(fused)
    assert count_fused(back) == 0 and _bn_count(back) == 2
    for a, b in zip(model.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert without_fused_batch_norm(model) is model  # nothing to change: the same object
    path = tmp_path / "m.keras"
    back.save(path)
    with zipfile.ZipFile(path) as z:
        assert "FusedBatchNormalization" not in z.read("config.json").decode()
    assert json.dumps(fused.get_config()).count("tfcnn>FusedBatchNormalization") == 2


def test_weight_files_load_across_the_two_kinds(tmp_path):
    plain = _compact()
    fused = with_fused_batch_norm(_compact())
    x, y = _batch(16)
    with tf.GradientTape() as tape:  # move the fused model's weights and statistics off the initial ones
        value = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, fused(x, training=True))
    keras.optimizers.SGD(0.1).apply(tape.gradient(value, fused.trainable_variables), fused.trainable_variables)
    fused.save_weights(tmp_path / "fused.weights.h5")
    plain.load_weights(tmp_path / "fused.weights.h5")
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)


class _Forgetful(keras.layers.Layer):
    """A custom layer whose config misses its constructor argument (from_config fails)."""

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, x):
        return x * self.scale


def test_a_model_that_cannot_be_rebuilt_trains_with_keras_layers(caplog):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, _Forgetful(2.0)(x))
    with caplog.at_level("WARNING", logger="tfcnn"):
        assert with_fused_batch_norm(model) is model
    assert "fused batch normalisation not used" in caplog.text and "train.fused_batch_norm = false" in caplog.text
