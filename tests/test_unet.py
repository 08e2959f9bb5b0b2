"""The unet builder: output size = input size for every depth and decoder, the refused sizes and
options, the transposed-conv size rule, the .keras round trip and a few training steps.

Kept tiny (4-8 base filters, 2-image batches) for the shared 2-core CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError
from tfcnn.models import build_model, resolve_options
from tfcnn.models.autoencoders import transposed_conv_size


def unet(**options) -> ModelConfig:
    return ModelConfig(name="unet", options={"filters": 4, "convs": 1, **options})


def images(shape: tuple[int, int, int], n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, *shape)).astype("float32")


@pytest.mark.parametrize("decoder", ["transpose", "upsample"])
@pytest.mark.parametrize(
    "depth,shape", [(1, (64, 64, 1)), (2, (96, 96, 3)), (3, (64, 96, 1)), (4, (96, 64, 3))]
)
def test_output_matches_input_size(depth: int, shape: tuple[int, int, int], decoder: str) -> None:
    model = build_model(unet(depth=depth, decoder=decoder), shape, 3)
    assert model.output_names == ["segmentation"] and str(model.output.dtype) == "float32"
    out = np.asarray(model(images(shape)))
    assert out.shape == (2, shape[0], shape[1], 4) and out.dtype == np.float32
    assert np.isfinite(out).all()


@pytest.mark.parametrize("depth,stride,shape", [(2, 2, (64, 64, 1)), (3, 2, (96, 96, 3)), (3, 4, (64, 96, 1)), (4, 8, (96, 64, 1))])
def test_output_stride_keeps_the_output_size_and_skips_full_resolution_work(
    depth: int, stride: int, shape: tuple[int, int, int]
) -> None:
    model = build_model(unet(depth=depth, output_stride=stride), shape, 3)
    out = np.asarray(model(images(shape)))
    assert out.shape == (2, shape[0], shape[1], 4) and np.isfinite(out).all()
    # below the output stride only the strided stems and the final upsampling touch a finer map
    finer = [
        layer.name for layer in model.layers
        if layer.name not in ("image", "normalize") and len(layer.output.shape) == 4
        and layer.output.shape[1] > shape[0] // stride
    ]
    assert all(n.startswith("stem") or n == "segmentation" for n in finer) and "segmentation" in finer
    assert not any(layer.name.startswith(("enc0", "dec0")) for layer in model.layers)


@pytest.mark.parametrize("stride", [0, 3, 8, -2])
def test_bad_output_stride_refused(stride) -> None:
    with pytest.raises(ConfigError, match=r"model.options.output_stride = .* must be a power of 2 below 2\*\*depth = 8"):
        resolve_options(ModelConfig(name="unet", options={"depth": 3, "output_stride": stride}))


def test_default_options_and_typos_refused() -> None:
    cfg = resolve_options(ModelConfig(name="unet"))
    assert {k: cfg.options[k] for k in ("depth", "filters", "convs", "decoder", "backbone")} == {
        "depth": 3, "filters": 16, "convs": 2, "decoder": "transpose", "backbone": "",
    }
    with pytest.raises(ConfigError, match="model.options.dpeth is not an option of unet"):
        resolve_options(ModelConfig(name="unet", options={"dpeth": 3}))
    with pytest.raises(ConfigError, match="model.options.decoder = 'bilinear'"):
        resolve_options(ModelConfig(name="unet", options={"decoder": "bilinear"}))
    with pytest.raises(ConfigError, match="model.options.depth = 0"):
        resolve_options(ModelConfig(name="unet", options={"depth": 0}))
    with pytest.raises(ConfigError, match="wrong type"):
        resolve_options(ModelConfig(name="unet", options={"filters": 1.5}))
    with pytest.raises(ConfigError, match="not a registered classifier"):
        resolve_options(ModelConfig(name="unet", options={"backbone": "retinanet"}))


@pytest.mark.parametrize("shape,depth", [((28, 28, 1), 3), ((65, 64, 1), 1), ((96, 100, 3), 4)])
def test_indivisible_sizes_refused_with_one_line(shape: tuple[int, int, int], depth: int) -> None:
    with pytest.raises(ConfigError) as info:
        build_model(unet(depth=depth), shape, 3)
    msg = str(info.value)
    assert "\n" not in msg and f"model.options.depth = {depth}" in msg
    assert f"{shape[0]}x{shape[1]}" in msg and "data.image_size or data.scenes.size" in msg
    assert f"multiple of {2**depth}" in msg


@pytest.mark.parametrize("n,k,s,p", [(2, 3, 2, 0), (7, 2, 2, 0), (5, 3, 1, 1), (4, 4, 2, 1), (6, 5, 3, 2)])
def test_transposed_conv_size_rule(n: int, k: int, s: int, p: int) -> None:
    import keras

    expect = s * (n - 1) + k - 2 * p
    assert transposed_conv_size(n, k, s, p) == expect
    # Keras' "valid" transposed conv is the p = 0 case; crop p from each side for p > 0
    x = keras.Input((n, n, 1))
    y = keras.layers.Conv2DTranspose(1, k, strides=s, padding="valid")(x)
    if p:
        y = keras.layers.Cropping2D(p)(y)
    assert tuple(y.shape[1:3]) == (expect, expect)


@pytest.mark.parametrize("n,k", [(6, 2), (7, 3), (12, 4)])
def test_same_stride2_transposed_conv_doubles(n: int, k: int) -> None:
    import keras

    y = keras.layers.Conv2DTranspose(1, k, strides=2, padding="same")(keras.Input((n, n, 1)))
    assert tuple(y.shape[1:3]) == (2 * n, 2 * n)
    assert transposed_conv_size(n, k, 2, (k - 2 + 1) // 2, output_padding=(k % 2)) == 2 * n


def test_parameter_count_grows_with_filters_and_depth() -> None:
    counts = [build_model(unet(filters=f, depth=2), (32, 32, 1), 3).count_params() for f in (2, 4, 8)]
    assert counts[0] < counts[1] < counts[2]
    assert build_model(unet(depth=3), (32, 32, 1), 3).count_params() > build_model(unet(depth=2), (32, 32, 1), 3).count_params()


def test_batch_norm_l2_dropout_are_used() -> None:
    import keras

    cfg = ModelConfig(name="unet", options={"filters": 4, "depth": 2}, l2=1e-4, dropout=0.3, batch_norm=True)
    model = build_model(cfg, (32, 32, 1), 2)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"BatchNormalization", "Dropout", "Concatenate", "Conv2DTranspose"} <= kinds
    assert model.get_layer("bottleneck_dropout").rate == 0.3
    assert len(model.losses) > 0
    plain = build_model(ModelConfig(name="unet", options={"filters": 4, "depth": 2}, batch_norm=False), (32, 32, 1), 2)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in plain.layers)


def test_keras_round_trip_identical(tmp_path) -> None:
    import keras

    model = build_model(unet(depth=2, decoder="upsample"), (32, 32, 1), 2)
    x = images((32, 32, 1))
    model.save(tmp_path / "unet.keras")
    loaded = keras.saving.load_model(tmp_path / "unet.keras")
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(loaded(x)))


@pytest.mark.parametrize("stride", [1, 2])
def test_backbone_encoder(stride: int) -> None:
    model = build_model(unet(depth=3, backbone="compact_cnn", output_stride=stride), (32, 32, 1), 2)
    out = np.asarray(model(images((32, 32, 1))))
    assert out.shape == (2, 32, 32, 3) and np.isfinite(out).all()
    assert any(layer.name.startswith("enc0") for layer in model.layers) == (stride == 1)


def test_a_few_train_steps_reduce_the_loss() -> None:
    import keras

    from tfcnn.tasks import segmentation_losses as sl

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = build_model(unet(depth=2, filters=8), (32, 32, 1), 2)
    masks = rng.integers(0, 3, (4, 32, 32))
    x = (masks[..., None] * 80.0 + rng.normal(0, 10, (4, 32, 32, 1))).astype("float32")  # learnable
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=sl.SegmentationLoss({"loss": "dice_ce"}))
    losses = [float(model.train_on_batch(x, masks)) for _ in range(8)]
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]


def test_pretrained_lite0_encoder_weights_are_copied_by_name(tmp_path) -> None:
    """The EfficientNet-Lite0 reference's weights (a .weights.h5, as `tfcnn weights` writes from
    the ImageNet checkpoint) fill the UNet's encoder layers; its own decoder keeps its init, and
    the backbone's fixed (x - 127) / 128 replaces the data's statistics."""
    from tfcnn.models.efficientnet_lite import reference_model

    reference = reference_model()
    path = tmp_path / "lite0.weights.h5"
    reference.save_weights(path)
    cfg = ModelConfig(name="unet", options={
        "depth": 4, "filters": 4, "convs": 1, "output_stride": 2,
        "backbone": "efficientnet_lite0", "backbone_options": {"input_size": 0}, "backbone_weights": str(path),
    })
    model = build_model(cfg, (64, 64, 3), 3)
    for name in ("stem_conv", "block02_expand_conv", "block08_dw_bn"):
        for a, b in zip(reference.get_layer(name).get_weights(), model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.ravel(model.get_layer("normalize").mean), [127.0] * 3)
    names = {layer.name for layer in model.layers}
    assert "head_conv" not in names and not any(n.startswith("enc0") for n in names)
    out = np.asarray(model(images((64, 64, 3))))
    assert out.shape == (2, 64, 64, 4) and np.isfinite(out).all()


@pytest.mark.parametrize("strides", [[8], [4, 8], [16, 8]])
def test_score_fusion_adds_upsampled_deep_logits(strides: list[int]) -> None:
    """Each listed stride adds a 1x1 class conv, upsampled by that stride; the output is their
    sum with the decoder's logits, still [B, H, W, K + 1] and named ``segmentation``."""
    import keras

    cfg = unet(depth=4, output_stride=2, score_strides=strides)
    model = build_model(cfg, (64, 96, 1), 3)
    assert model.output_names == ["segmentation"] and isinstance(model.get_layer("segmentation"), keras.layers.Add)
    for s in strides:
        conv = model.get_layer(f"score{s}")
        assert tuple(conv.input.shape[1:3]) == (64 // s, 96 // s) and conv.kernel.shape[:2] == (1, 1)
        assert tuple(model.get_layer(f"score{s}_up").output.shape[1:]) == (64, 96, 4)
    x = images((64, 96, 1))
    out = np.asarray(model(x))
    assert out.shape == (2, 64, 96, 4) and out.dtype == np.float32 and np.isfinite(out).all()
    # the sum really is the decoder's logits plus each upsampled score map
    parts = keras.Model(model.input, [model.get_layer("segmentation_full").output]
                        + [model.get_layer(f"score{s}_up").output for s in strides])(x)
    np.testing.assert_allclose(out, sum(np.asarray(p) for p in parts), rtol=1e-5, atol=1e-5)
    # a constant score map upsamples to the same constant (bilinear, no border falloff)
    up = model.get_layer(f"score{strides[0]}_up")
    const = np.full((1, 64 // strides[0], 96 // strides[0], 4), 2.5, "float32")
    np.testing.assert_allclose(np.asarray(up(const)), 2.5, rtol=1e-6)
    plain = build_model(unet(depth=4, output_stride=2), (64, 96, 1), 3)
    extra = sum((model.get_layer(f"score{s}").input.shape[-1] + 1) * 4 for s in strides)  # 1x1 kernels + biases
    assert model.count_params() - plain.count_params() == extra


@pytest.mark.parametrize("strides,fragment", [
    ([2], "entry 2 must be a power of 2 above output_stride = 2"),
    ([32], "entry 32 must be a power of 2 above output_stride = 2 and at most 2\\*\\*depth = 16"),
    ([12], "entry 12"),
    ([8, 8], "lists a stride twice"),
    (["8"], "wrong type|entry '8'"),
])
def test_bad_score_strides_refused(strides, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        resolve_options(unet(depth=4, output_stride=2, score_strides=strides))


def test_score_fusion_converts_to_tflite_and_runs_in_litert_like_keras(tmp_path) -> None:
    """The fused model's bilinear UpSampling2D and Add survive the TFLite converter: LiteRT's
    float32 output equals Keras' (the pipeline run verifies every format of the real model)."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    model = build_model(unet(depth=3, output_stride=2, score_strides=[4, 8]), (32, 32, 1), 2)
    path = tmp_path / "fused.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    x = images((32, 32, 1), n=1)
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    np.testing.assert_allclose(interp.get_tensor(out["index"]), np.asarray(model(x)), rtol=1e-4, atol=1e-4)
