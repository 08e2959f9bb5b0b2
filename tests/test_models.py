"""Model builders: exact course numbers, the common frame, config knobs, save/reload, mixed precision."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError
from tfcnn.models import available, build_model, get_builder, option_defaults, register, resolve
from tfcnn.models import conv_math as cm

# Small variants keep the whole file fast; the default sizes are checked by parameter count only.
SMALL = {
    "seed_cnn": ModelConfig(name="seed_cnn", width=0.25),
    "compact_cnn": ModelConfig(name="compact_cnn", width=0.5, se=True, dropout=0.1),
    "compact_gdconv": ModelConfig(name="compact_cnn", width=0.5, dropout=0.1, options={"head": "gdconv"}),
    "resnet": ModelConfig(name="resnet", width=0.5, depth=8, se=True),
    "resnet_bottleneck": ModelConfig(name="resnet", block="bottleneck", depth=11, width=0.5),
    "mobilenet": ModelConfig(name="mobilenet", width=0.25, depth=1, se=True),
    "mobilenet_separable": ModelConfig(
        name="mobilenet", width=0.25, options={"block_type": "separable", "stages": [[32, 1, 1], [64, 1, 2], [128, 2, 2]]}
    ),
    "vgg": ModelConfig(name="vgg", width=0.25, dropout=0.2),
    "vgg_dense": ModelConfig(name="vgg", width=0.25, batch_norm=False, options={"head": "dense", "blocks": 2}),
    "tiny_cnn": ModelConfig(name="tiny_cnn"),
}


def _images(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(n, *shape)).astype("float32")


def _kernel_layers(model: keras.Model) -> list[keras.layers.Layer]:
    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    return [layer for layer in model.layers if isinstance(layer, kinds)]


def _kernel(layer: keras.layers.Layer):
    return layer.kernel  # DepthwiseConv2D keeps its depthwise kernel under the same name


# --------------------------------------------------------------------------- conv arithmetic


def test_conv_params_course_example():
    assert cm.conv_params(3, 3, 64) == 1792  # 64 filters of 3x3x3 plus 64 biases
    assert cm.conv_params(3, 3, 64, bias=False) == 1728
    layer = keras.layers.Conv2D(64, 3)
    layer.build((None, 32, 32, 3))
    assert layer.count_params() == cm.conv_params(3, 3, 64)
    dw = keras.Sequential([keras.Input((8, 8, 16)), keras.layers.SeparableConv2D(32, 3)])
    assert dw.count_params() == cm.depthwise_separable_params(3, 16, 32) - 16  # Keras: one bias, after pointwise


@pytest.mark.parametrize(
    "n,k,s,p",
    [(28, 3, 1, 0), (28, 3, 1, 1), (28, 5, 2, 2), (32, 3, 2, 1), (7, 3, 2, 0), (10, 4, 3, 2), (5, 5, 1, 0), (224, 7, 2, 3)],
)
def test_conv_output_size_matches_keras(n, k, s, p):
    x = keras.Input((n, n, 1))
    y = keras.layers.ZeroPadding2D(p)(x) if p else x
    y = keras.layers.Conv2D(2, k, strides=s, padding="valid")(y)
    assert y.shape[1] == y.shape[2] == cm.conv_output_size(n, k, s, p)
    assert cm.conv_output_size(n, k, s, p) == (n + 2 * p - k) // s + 1  # the +1 the notes leave out


def test_pooling_and_same_padding_match_keras():
    for n, k, s in [(28, 3, 1), (28, 3, 2), (13, 3, 2), (14, 2, 2), (9, 4, 3), (7, 5, 1)]:
        x = keras.Input((n, n, 1))
        assert keras.layers.Conv2D(1, k, strides=s, padding="same")(x).shape[1] == cm.output_size(n, k, s, "same")
        assert keras.layers.MaxPooling2D(k, strides=s)(x).shape[1] == cm.output_size(n, k, s, "valid")
    assert cm.conv_output_size(28, 3, 1, 1) == 28  # p = (k - 1) / 2 keeps the size
    with pytest.raises(ValueError, match="does not fit"):
        cm.conv_output_size(2, 5)


@pytest.mark.parametrize("n,k,s", [(9, 3, 2), (10, 3, 2), (8, 4, 1), (7, 5, 3)])
def test_same_padding_reproduces_keras_same(n, k, s):
    """TF's "same" equals explicit (before, after) zero padding followed by a "valid" conv."""
    x = _images(2, (n, n, 1))
    same = keras.layers.Conv2D(1, k, strides=s, padding="same", kernel_initializer="ones", use_bias=False)
    valid = keras.layers.Conv2D(1, k, strides=s, padding="valid", kernel_initializer="ones", use_bias=False)
    pad = cm.same_padding(n, k, s)
    explicit = valid(keras.layers.ZeroPadding2D((pad, pad))(x))
    np.testing.assert_allclose(np.asarray(same(x)), np.asarray(explicit), rtol=1e-6)


def test_receptive_fields_course_formula():
    assert cm.receptive_fields([3, 3, 3]) == [3, 5, 7]
    assert cm.receptive_fields([3, 3, 3], [1, 2, 1]) == [3, 5, 9]  # not the notes' 3, 7, 11
    assert cm.receptive_fields([3, 2, 3, 2], [1, 2, 1, 2]) == [3, 4, 8, 10]
    with pytest.raises(ValueError, match="one stride per layer"):
        cm.receptive_fields([3, 3], [1])


def test_model_receptive_fields_follow_the_graph():
    seed = build_model(ModelConfig(name="seed_cnn"), (28, 28, 1), 10)
    rf = cm.model_receptive_fields(seed)
    assert [rf[n][0] for n in ("conv1", "pool1", "conv2", "pool2")] == cm.receptive_fields([3, 2, 3, 2], [1, 2, 1, 2])
    assert "dense1" not in rf  # past the spatial part
    res = build_model(ModelConfig(name="resnet", depth=8, width=0.25), (32, 32, 3), 10)
    rf = cm.model_receptive_fields(res)
    # stem 3, stage1 +2+2, stage2 stride-2 conv +2 then +4, stage3 +4 then +8: 25; the 1x1 projections add nothing
    assert rf["stage3_block1_out"] == (25, 4)
    assert rf["stage2_block1_proj_conv"][0] < rf["stage2_block1_2_conv"][0]


# --------------------------------------------------------------------------- sizes


def test_seed_cnn_has_the_course_parameter_count():
    model = build_model(ModelConfig(name="seed_cnn"), (28, 28, 1), 10)  # BatchNorm default is ignored
    assert model.count_params() == 421_642
    assert build_model(ModelConfig(name="seed_cnn", batch_norm=False), (28, 28, 1), 10).count_params() == 421_642
    assert [layer.name for layer in model.layers if layer.count_params()] == ["conv1", "conv2", "dense1", "logits"]
    with_bn = build_model(ModelConfig(name="seed_cnn", options={"batch_norm": True}), (28, 28, 1), 10)
    assert with_bn.count_params() == 421_642 - 32 - 64 + 4 * (32 + 64)  # conv biases dropped, BN added


def test_compact_cnn_is_under_100k_parameters():
    for se in (False, True):
        model = build_model(ModelConfig(name="compact_cnn", se=se), (28, 28, 1), 10)
        assert model.count_params() < 100_000
        assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
        assert isinstance(model.get_layer("gap"), keras.layers.GlobalAveragePooling2D)
    plain = build_model(ModelConfig(name="compact_cnn"), (28, 28, 1), 10).count_params()
    assert build_model(ModelConfig(name="compact_cnn", se=True), (28, 28, 1), 10).count_params() > plain


def test_compact_cnn_gdconv_head_is_learned_spatial_pooling():
    model = build_model(ModelConfig(name="compact_cnn", options={"head": "gdconv"}), (28, 28, 1), 10)
    assert model.count_params() < 100_000
    gd = model.get_layer("gdconv")
    assert tuple(gd.kernel.shape) == (7, 7, 72, 1) and not gd.use_bias  # one 7x7 weighting per channel
    assert model.get_layer("gdconv_flatten").output.shape == (None, 72)
    # with uniform 1/49 weights and no BatchNorm it is exactly global average pooling
    cfg = ModelConfig(name="compact_cnn", batch_norm=False, width=0.25, options={"head": "gdconv"})
    m = build_model(cfg, (28, 28, 1), 10)
    m.get_layer("gdconv").kernel.assign(np.full((7, 7, 18, 1), 1 / 49, "float32"))
    m.get_layer("gdconv").bias.assign(np.zeros(18, "float32"))
    features = keras.Model(m.input, [m.get_layer("s3_c2_act").output, m.get_layer("gdconv_flatten").output])
    fmap, pooled = features(_images(2, (28, 28, 1)))
    np.testing.assert_allclose(np.asarray(pooled), np.asarray(fmap).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_resnet_depth_rule_and_projections():
    model = build_model(ModelConfig(name="resnet", depth=20), (32, 32, 3), 10)
    assert 0.26e6 < model.count_params() < 0.28e6  # ResNet-20's 0.27M (He et al., table 6)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len([c for c in convs if c.kernel_size == (3, 3)]) == 19  # + the logits layer = 20
    proj = [c for c in convs if c.kernel_size == (1, 1)]
    assert [c.strides for c in proj] == [(2, 2), (2, 2)]  # only where the shape changes
    bottleneck = build_model(ModelConfig(name="resnet", block="bottleneck", depth=11, width=0.5), (28, 28, 1), 4)
    assert bottleneck.get_layer("stage1_block1_proj_conv").filters == 4 * 8  # channel change, stride 1
    with pytest.raises(ConfigError, match="model.depth = 21.*6n\\+2"):
        build_model(ModelConfig(name="resnet", depth=21), (32, 32, 3), 10)


def test_mobilenet_blocks():
    inverted = build_model(SMALL["mobilenet"], (32, 32, 3), 10)
    adds = [layer.name for layer in inverted.layers if isinstance(layer, keras.layers.Add)]
    assert adds == ["stage1_block1_add"]  # depth=1: only the stride-1, 8->8 channel block keeps its shape
    assert any(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in inverted.layers)
    assert inverted.get_layer("stage2_block1_expand_conv").filters == 6 * inverted.get_layer("stage1_block1_project_conv").filters
    deep = build_model(ModelConfig(name="mobilenet", width=0.25, depth=2), (28, 28, 1), 10)
    assert "stage3_block2_add" in [layer.name for layer in deep.layers]  # identity shortcut on repeats
    sep = build_model(SMALL["mobilenet_separable"], (28, 28, 1), 10)
    assert not any(isinstance(layer, keras.layers.Add) for layer in sep.layers)
    k, c_in, c_out = 3, 8, 16  # stage2 block: 8 -> 16 channels at width 0.25
    dw, pw = sep.get_layer("stage2_block1_dw_dwconv"), sep.get_layer("stage2_block1_pw_conv")
    assert dw.count_params() + pw.count_params() == cm.depthwise_separable_params(k, c_in, c_out, bias=False)


def test_vgg_depth_and_too_many_blocks():
    model = build_model(ModelConfig(name="vgg", depth=3, width=0.25), (32, 32, 3), 10)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 9 and [c.filters for c in convs[::3]] == [8, 16, 32]
    with pytest.raises(ConfigError, match="model.options.blocks = 6"):
        build_model(ModelConfig(name="vgg", width=0.25, options={"blocks": 6}), (28, 28, 1), 10)


# --------------------------------------------------------------------------- the common frame


@pytest.mark.parametrize("key", sorted(SMALL))
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_every_model_builds_in_the_frame(key, shape):
    model = build_model(SMALL[key], shape, 7, mean=[100.0] * shape[-1], std=[50.0] * shape[-1])
    assert model.layers[0].name == "image" and model.input.dtype == "float32"
    assert model.layers[1].name == "normalize"
    assert model.layers[-1].name == "logits" and model.layers[-1].activation is keras.activations.linear
    out = model.predict(_images(3, shape), verbose=0)
    assert out.shape == (3, 7) and out.dtype == np.float32 and np.isfinite(out).all()


def test_registry_lists_every_architecture():
    assert {"seed_cnn", "compact_cnn", "resnet", "mobilenet", "vgg", "tiny_cnn"} <= set(available())
    with pytest.raises(ConfigError, match="'nope' is not a registered model; choose one of .*compact_cnn.*mobilenet.*resnet.*seed_cnn.*vgg"):
        build_model(ModelConfig(name="nope"), (28, 28, 1), 10)


def test_register_refuses_a_taken_name_and_the_options_are_the_declaration():
    with pytest.raises(ValueError, match="model 'tiny_cnn' is registered twice"):
        register("tiny_cnn")(lambda x, cfg: x)
    builder = get_builder("compact_cnn")
    assert builder.name == "compact_cnn" and builder.options == option_defaults("compact_cnn")
    option_defaults("compact_cnn")["head"] = "changed"  # a copy: the declaration stays as registered
    assert builder.options["head"] == "gap"
    with pytest.raises(ConfigError, match=r"'compact_cn' is not a registered model \(did you mean 'compact_cnn'\?\)"):
        get_builder("compact_cn")


@pytest.mark.parametrize("key", ["compact_cnn", "compact_gdconv", "resnet", "mobilenet", "vgg_dense", "seed_cnn"])
def test_l2_adds_one_loss_per_kernel(key):
    cfg = SMALL[key]
    plain = build_model(cfg, (28, 28, 1), 10)
    assert plain.losses == []
    lam = 3e-4
    model = build_model(ModelConfig(**{**cfg.__dict__, "l2": lam}), (28, 28, 1), 10)
    kernels = _kernel_layers(model)
    assert len(model.losses) == len(kernels) > 0
    expected = sum(lam * float(np.sum(np.square(np.asarray(_kernel(layer))))) for layer in kernels)
    assert float(sum(np.asarray(loss) for loss in model.losses)) == pytest.approx(expected, rel=1e-4)


def test_width_dropout_activation_batch_norm_knobs():
    narrow = build_model(ModelConfig(name="compact_cnn", width=0.5), (28, 28, 1), 10)
    wide = build_model(ModelConfig(name="compact_cnn", width=1.0), (28, 28, 1), 10)
    assert narrow.get_layer("s3_c1_conv").filters * 2 == wide.get_layer("s3_c1_conv").filters
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in wide.layers)
    cfg = ModelConfig(name="compact_cnn", dropout=0.3, activation="silu", batch_norm=False)
    model = build_model(cfg, (28, 28, 1), 10)
    assert model.get_layer("dropout").rate == 0.3
    assert model.get_layer("s2_c1_act").activation is keras.activations.silu
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert model.get_layer("s2_c1_conv").use_bias  # no BN to absorb the bias
    assert not wide.get_layer("s2_c1_conv").use_bias
    deeper = build_model(ModelConfig(name="compact_cnn", depth=3), (28, 28, 1), 10)
    assert "s3_c3_conv" in [layer.name for layer in deeper.layers]


def test_options_are_validated():
    assert option_defaults("compact_cnn")["filters"] == [16, 40, 72]
    with pytest.raises(ConfigError, match="model.options.filterz is not an option of compact_cnn; allowed options: convs, filters, head, se_ratio"):
        build_model(ModelConfig(name="compact_cnn", options={"filterz": [8]}), (28, 28, 1), 10)
    with pytest.raises(ConfigError, match="model.options.anything is not an option of tiny_cnn; allowed options: none"):
        resolve(ModelConfig(name="tiny_cnn", options={"anything": 1}))
    with pytest.raises(ConfigError, match="model.options.batch_norm = 'yes' has the wrong type"):
        resolve(ModelConfig(name="seed_cnn", options={"batch_norm": "yes"}))
    with pytest.raises(ConfigError, match="model.options.convs has 2 entries but model.options.filters has 3"):
        build_model(ModelConfig(name="compact_cnn", options={"convs": [1, 2]}), (28, 28, 1), 10)
    with pytest.raises(ConfigError, match="model.options.head = 'flatten'; choose one of gap, gdconv"):
        build_model(ModelConfig(name="compact_cnn", options={"head": "flatten"}), (28, 28, 1), 10)
    with pytest.raises(ConfigError, match="block_type = 'dense'"):
        build_model(ModelConfig(name="mobilenet", options={"block_type": "dense"}), (28, 28, 1), 10)
    with pytest.raises(ConfigError, match="model.activation = 'rellu'"):
        resolve(ModelConfig(name="vgg", activation="rellu"))
    resolved = resolve(ModelConfig(name="mobilenet", options={"expansion": 4}))
    assert resolved.options["expansion"] == 4 and resolved.options["block_type"] == "inverted_residual"


# --------------------------------------------------------------------------- persistence and precision


@pytest.mark.parametrize("key", ["seed_cnn", "compact_cnn", "compact_gdconv", "resnet", "resnet_bottleneck", "mobilenet", "mobilenet_separable", "vgg"])
def test_save_and_reload_gives_identical_outputs(key, tmp_path):
    model = build_model(SMALL[key], (32, 32, 3), 5, mean=[120.0, 110.0, 100.0], std=[60.0, 50.0, 40.0])
    # move every weight (BatchNorm gamma/beta and moving statistics included) off its initial value,
    # so a reload that silently re-initialised anything would show
    rng = np.random.default_rng(1)
    model.set_weights([w + rng.uniform(0.0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])
    x = _images(8, (32, 32, 3))
    path = tmp_path / f"{key}.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), reloaded.predict(x, verbose=0))
    assert reloaded.get_layer("normalize") is not None and reloaded.name == model.name


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_float32_logits(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        for key in ("compact_cnn", "resnet", "mobilenet", "seed_cnn"):
            model = build_model(SMALL[key], (28, 28, 1), 10)
            half = policy.split("_")[1]
            assert model.get_layer("normalize").compute_dtype == half  # the body really runs in low precision
            assert model.get_layer("logits").compute_dtype == "float32"
            out = model(_images(2, (28, 28, 1)), training=False)
            assert out.dtype == "float32" and np.isfinite(np.asarray(out)).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_separable_convs_grow_the_receptive_field():
    """Keras 3's SeparableConv2D is not a Conv2D subclass; it must still count as a kernel."""
    from tfcnn.models.conv_math import model_receptive_fields

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.SeparableConv2D(4, 3, padding="same", name="sep1")(inputs)
    x = keras.layers.SeparableConv2D(4, 5, strides=2, padding="same", name="sep2")(x)
    x = keras.layers.SeparableConv2D(4, 3, padding="same", name="sep3")(x)
    fields = model_receptive_fields(keras.Model(inputs, x))
    assert [fields[n] for n in ("sep1", "sep2", "sep3")] == [(3, 1), (7, 2), (11, 2)]
