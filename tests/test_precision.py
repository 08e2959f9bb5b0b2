"""A model built under a mixed precision policy gets a float32 twin with the very same weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfcnn.models.precision import float32_model, is_mixed


def _nested(policy: str) -> keras.Model:
    """A functional model holding a nested functional model and a BatchNormalization, built under ``policy``."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        inner_in = keras.Input((8, 8, 4))
        inner = keras.Model(inner_in, keras.layers.Conv2D(6, 3, activation="relu")(inner_in), name="inner")
        x_in = keras.Input((10, 10, 1))
        x = keras.layers.Conv2D(4, 3, padding="valid", name="stem")(x_in)
        x = keras.layers.BatchNormalization(name="bn")(x)
        x = inner(keras.layers.Cropping2D(0)(x))
        x = keras.layers.GlobalAveragePooling2D()(x)
        out = keras.layers.Dense(3, name="logits", dtype="float32")(x)
        return keras.Model(x_in, out, name="outer")
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_the_float32_twin_has_the_weights_and_the_outputs_to_rounding(policy):
    keras.utils.set_random_seed(0)
    mixed = _nested(policy)
    assert is_mixed(mixed) and mixed.get_layer("inner").get_layer(index=1).compute_dtype != "float32"
    twin = float32_model(mixed)
    assert twin is not mixed and not is_mixed(twin)
    layers = list(twin.layers) + list(twin.get_layer("inner").layers)
    assert {l.compute_dtype for l in layers} == {"float32"}
    for a, b in zip(twin.get_weights(), mixed.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).normal(size=(4, 10, 10, 1)).astype("float32")
    got, want = twin.predict(x, verbose=0), mixed.predict(x, verbose=0)
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())  # bfloat16 keeps 8 bits of mantissa
    assert is_mixed(mixed)  # the original is left as it was
    assert keras.mixed_precision.global_policy().name == "float32"


def test_a_float32_model_is_returned_as_it_is():
    model = _nested("float32")
    assert not is_mixed(model) and float32_model(model) is model


def test_auto_mixed_precision_follows_the_cpu(monkeypatch):
    import tensorflow as tf

    from tfcnn.config import TrainConfig, from_dict
    from tfcnn.train import distribute

    assert distribute.cpu_has_bfloat16("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert distribute.cpu_has_bfloat16("flags\t: avx2 amx_bf16 amx_tile\n")
    assert not distribute.cpu_has_bfloat16("flags\t: fpu sse4_2 avx2 fma\n")
    assert not distribute.cpu_has_bfloat16("model name\t: no flags line\n")
    assert distribute.cpu_has_bfloat16("Features\t: fp asimd bf16 i8mm\n")  # ARM

    # "auto" wants AMX: AVX512-BF16 alone made the main job's model slower (README)
    assert distribute.cpu_has_amx_bfloat16("flags\t: avx2 avx512_bf16 amx_bf16 amx_tile amx_int8\n")
    assert not distribute.cpu_has_amx_bfloat16("flags\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert not distribute.cpu_has_amx_bfloat16("flags\t: avx2 amx_tile amx_int8\n")  # tiles without bf16
    assert distribute.cpu_flags("flags\t: a b\n") == {"a", "b"} and distribute.cpu_flags("nothing\n") == set()

    auto = from_dict({"train": {"mixed_precision": "auto"}}).train
    assert auto.mixed_precision == "auto"
    strategy = tf.distribute.get_strategy()
    for has, want in ((True, "mixed_bfloat16"), (False, "float32")):
        monkeypatch.setattr(distribute, "cpu_has_amx_bfloat16", lambda has=has: has)
        assert distribute.precision_policy(auto, strategy) == want
        assert distribute.precision_policy(TrainConfig(mixed_precision=True), strategy) == "mixed_bfloat16"
        assert distribute.precision_policy(TrainConfig(), strategy) == "float32"


def test_mixed_precision_takes_true_false_or_auto_only():
    from tfcnn.config import from_dict
    from tfcnn.errors import ConfigError

    with pytest.raises(ConfigError, match="train.mixed_precision"):
        from_dict({"train": {"mixed_precision": "bf16"}})
