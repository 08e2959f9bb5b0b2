"""The detector builders: retinanet (FPN + shared heads on any classifier body) and localizer.

Kept tiny (small channels, 2-sample batches) because the machine is a shared 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError
from tfcnn.models import anchors, build_model, get_builder, resolve_options
from tfcnn.models.retinanet import anchor_spec, prior_bias

SMALL = {"fpn_channels": 16, "head_channels": 16}
FIVE_STAGES = {"filters": [8, 12, 16, 24, 32], "convs": [1, 1, 1, 1, 1]}
MOBILE = {"stages": [[8, 1, 1], [16, 1, 2], [16, 1, 2], [24, 1, 2], [32, 1, 2], [32, 1, 2]], "head_filters": 0}


def retina(backbone: str = "compact_cnn", backbone_options: dict | None = None, **options) -> ModelConfig:
    return ModelConfig(
        name="retinanet",
        options={"backbone": backbone, "backbone_options": backbone_options or {}, **SMALL, **options},
    )


def images(shape: tuple[int, int, int], n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, *shape)).astype("float32")


CASES = {
    "compact_default_96": (retina(), (96, 96, 1)),
    "compact_5stages_100": (retina(backbone_options=FIVE_STAGES), (100, 100, 1)),
    "resnet_128": (retina("resnet", {"base_filters": 8}, levels=[2, 3, 4, 5, 6]), (128, 128, 3)),
    "mobilenet_96_odd_levels": (retina("mobilenet", MOBILE, levels=[3, 5]), (96, 96, 3)),
    "mobilenet_100": (retina("mobilenet", MOBILE, anchor_ratios=[1.0], anchor_scales=[1.0, 2.0]), (100, 100, 3)),
    # a keras.applications backbone: one nested model, searched inside (input_size forced to 0)
    "mobilenet_v2_app_96": (retina("mobilenet_v2"), (96, 96, 3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_retinanet_output_matches_anchor_count(case: str) -> None:
    cfg, shape = CASES[case]
    model = build_model(cfg, shape, 3)
    spec = anchor_spec(resolve_options(cfg))
    a = anchors.count(spec, shape[0], shape[1])
    assert model.layers[-1].name == "detections" and model.output_names == ["detections"]
    out = model(images(shape))
    assert tuple(out.shape) == (2, a, 4 + 3)
    assert str(model.output.dtype) == "float32" and np.asarray(out).dtype == np.float32
    assert np.isfinite(np.asarray(out)).all()


def test_default_retinanet_and_anchor_spec() -> None:
    cfg = resolve_options(ModelConfig(name="retinanet"))
    assert cfg.options["levels"] == [3, 4, 5] and cfg.options["backbone"] == "compact_cnn"
    spec = anchor_spec(cfg)
    assert spec == anchors.AnchorSpec((3, 4, 5), 4.0, (1.0, 1.2599, 1.5874), (0.5, 1.0, 2.0))
    assert anchor_spec(ModelConfig(name="retinanet")) == spec  # unresolved configs are resolved
    builder = get_builder("retinanet")
    assert builder.takes_classes and not builder.head


def test_prior_probability_initialisation() -> None:
    cfg = retina(prior_probability=0.05)
    model = build_model(cfg, (64, 64, 1), 4)
    out = np.asarray(model(images((64, 64, 1))))
    p = 1 / (1 + np.exp(-out[..., 4:]))
    assert abs(p.mean() - 0.05) < 0.01
    bias = model.get_layer("class_out").get_weights()[1]
    np.testing.assert_allclose(bias, prior_bias(0.05), rtol=1e-6)
    assert math.isclose(1 / (1 + math.exp(-prior_bias(0.01))), 0.01)


def test_head_is_shared_across_levels() -> None:
    def head_weights(levels: list[int]) -> int:
        model = build_model(retina(levels=levels), (64, 64, 1), 2)
        head = [l for l in model.layers if l.name.startswith(("class_conv", "class_out", "box_conv", "box_out"))]
        assert all(len(l._inbound_nodes) == len(levels) for l in head)  # one layer, called on every level
        assert len(head) == 2 * (2 + 1)  # head_convs convs + one output conv, per subnet, once
        return sum(l.count_params() for l in head)

    assert head_weights([4]) == head_weights([3, 4, 5]) > 0


def test_impossible_level_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.options\.levels = \[3, 4, 5, 6, 7\]: level 7 .*96x96") as info:
        build_model(retina(levels=[3, 4, 5, 6, 7]), (96, 96, 1), 2)
    assert "\n" not in str(info.value)
    stem2 = {**MOBILE, "stem_strides": 2}
    with pytest.raises(ConfigError, match=r"model\.options\.levels = \[0, 3\]: backbone mobilenet has no feature map at stride 1 of the 64x64"):
        build_model(retina("mobilenet", stem2, levels=[0, 3]), (64, 64, 3), 2)
    with pytest.raises(ConfigError, match=r"model\.options\.levels"):
        resolve_options(retina(levels=[5, 3]))


def test_option_typos_are_refused() -> None:
    with pytest.raises(ConfigError, match="model.options.levles is not an option of retinanet"):
        resolve_options(ModelConfig(name="retinanet", options={"levles": [3]}))
    with pytest.raises(ConfigError, match="model.options.fpn_channels = 'wide' has the wrong type"):
        resolve_options(ModelConfig(name="retinanet", options={"fpn_channels": "wide"}))
    with pytest.raises(ConfigError, match="model.options.backbone_options.filtres is not an option of compact_cnn"):
        resolve_options(ModelConfig(name="retinanet", options={"backbone_options": {"filtres": [8]}}))
    with pytest.raises(ConfigError, match="model.options.backbone = 'retinanet' is not a registered classifier"):
        resolve_options(ModelConfig(name="localizer", options={"backbone": "retinanet"}))
    with pytest.raises(ConfigError, match="model.options.backbone_weights = 'imagenet' needs a backbone with a weights file"):
        resolve_options(ModelConfig(name="retinanet", options={"backbone_weights": "imagenet"}))
    with pytest.raises(ConfigError, match="model.options.prior_probability"):
        resolve_options(ModelConfig(name="retinanet", options={"prior_probability": 1.5}))
    with pytest.raises(ConfigError, match="needs at least 1 object class"):
        build_model(retina(), (64, 64, 1), 0)


def test_keras_round_trip_gives_identical_outputs(tmp_path) -> None:
    import keras

    model = build_model(retina(backbone_options=FIVE_STAGES), (100, 100, 1), 2)
    path = tmp_path / "retinanet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = images((100, 100, 1))
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(loaded(x)))


def test_gradient_steps_change_weights() -> None:
    import keras
    import tensorflow as tf

    model = build_model(retina(), (64, 64, 1), 2)
    x = images((64, 64, 1), n=4)
    y = np.random.default_rng(1).uniform(0, 1, (4, model.output.shape[1], 6)).astype("float32")
    before = [w.numpy().copy() for w in model.trainable_weights]
    opt = keras.optimizers.Adam(1e-3)
    for _ in range(3):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.reduce_mean(tf.square(out[..., :4] - y[..., :4])) + tf.reduce_mean(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.round(y[..., 4:]), logits=out[..., 4:]))
        grads = tape.gradient(loss, model.trainable_weights)
        opt.apply_gradients(zip(grads, model.trainable_weights))
    assert np.isfinite(float(loss))
    after = [w.numpy() for w in model.trainable_weights]
    assert all(np.isfinite(a).all() for a in after)
    for name in ("class_out", "box_out", "fpn_smooth3", "s1_c1_conv"):
        idx = [i for i, w in enumerate(model.trainable_weights) if w.path.startswith(name + "/")]
        assert idx and any(not np.array_equal(before[i], after[i]) for i in idx), name


def test_float32_output_under_mixed_precision() -> None:
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(retina(), (64, 64, 1), 2)
        loc = build_model(ModelConfig(name="localizer"), (32, 32, 1), 2)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.get_layer("fpn_smooth3").compute_dtype == "float16"
    assert str(model.output.dtype) == "float32" and str(loc.output.dtype) == "float32"


def test_efficientnet_lite0_backbone_builds_random() -> None:
    cfg = retina("efficientnet_lite0", backbone_weights="none")
    model = build_model(cfg, (96, 96, 3), 2)
    assert tuple(model.output.shape) == (None, anchors.count(anchor_spec(resolve_options(cfg)), 96, 96), 6)
    # the backbone's own normalisation ((x - 127) / 128) replaces the data's statistics
    np.testing.assert_allclose(np.ravel(model.get_layer("normalize").mean), [127.0] * 3)
    assert model.get_layer("fpn_lateral5")._inbound_nodes[0].input_tensors[0]._keras_history[0].name == "head_relu6"


def test_backbone_weights_are_copied_by_name(tmp_path) -> None:
    """A .weights.h5 of the Lite0 reference fills the backbone layers of the detector."""
    from tfcnn.models.efficientnet_lite import reference_model

    reference = reference_model()
    path = tmp_path / "lite0.weights.h5"
    reference.save_weights(path)
    model = build_model(retina("efficientnet_lite0", backbone_weights=str(path), levels=[3, 4]), (64, 64, 3), 2)
    for name in ("stem_conv", "block05_expand_conv", "block11_expand_bn"):
        for a, b in zip(reference.get_layer(name).get_weights(), model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert "head_conv" not in {l.name for l in model.layers}  # past the deepest map used: left out


def test_localizer_output() -> None:
    cfg = ModelConfig(name="localizer", dropout=0.2, options={"backbone": "resnet", "backbone_options": {"base_filters": 8}})
    model = build_model(cfg, (48, 40, 3), 5)
    assert model.layers[-1].name == "localization"
    out = np.asarray(model(images((48, 40, 3))))
    assert out.shape == (2, 4 + 5 + 1) and out.dtype == np.float32
    assert ((out[:, :4] >= 0) & (out[:, :4] <= 1)).all()
    assert "dropout" in {l.name for l in model.layers}
    mob = build_model(dataclasses.replace(cfg, options={"backbone": "mobilenet", "backbone_options": MOBILE}), (32, 32, 1), 1)
    assert tuple(mob.output.shape) == (None, 6)


def test_backbone_from_a_tfcnn_classifier(tmp_path) -> None:
    """backbone_weights = a classifier's .keras: its body and normalize statistics are copied by
    name into the detector (and a unet encoder); other options, no shared layer or a missing file
    are one ConfigError line each."""
    opts = {"filters": [8, 16, 24], "convs": [1, 1, 1]}
    classifier = build_model(ModelConfig(name="compact_cnn", options=opts), (28, 28, 1), 10, [72.9], [90.0])
    path = tmp_path / "items.keras"
    classifier.save(path)
    det = build_model(retina("compact_cnn", opts, backbone_weights=str(path), levels=[2, 3]), (64, 64, 1), 3, [30.0], [20.0])
    for name in ("s1_c1_conv", "s2_c1_bn", "s3_c1_conv"):
        for a, b in zip(classifier.get_layer(name).get_weights(), det.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.ravel(det.get_layer("normalize").mean), [72.9], rtol=1e-6)  # the classifier's inputs
    seg = build_model(
        ModelConfig(name="unet", options={"depth": 2, "filters": 4, "convs": 1, "output_stride": 2, "backbone": "compact_cnn",
                                          "backbone_options": opts, "backbone_weights": str(path)}),
        (32, 32, 1), 3,
    )
    np.testing.assert_array_equal(classifier.get_layer("s2_c1_conv").get_weights()[0], seg.get_layer("s2_c1_conv").get_weights()[0])
    with pytest.raises(ConfigError, match=r"layer 's1_c1_conv' has weights .* there but .* in this retinanet"):
        build_model(retina("compact_cnn", {"filters": [12, 16, 24], "convs": [1, 1, 1]}, backbone_weights=str(path), levels=[2, 3]),
                    (64, 64, 1), 3)
    with pytest.raises(ConfigError, match="shares no layer with this retinanet's resnet backbone"):
        build_model(retina("resnet", {"base_filters": 8}, backbone_weights=str(path), levels=[2, 3]), (64, 64, 1), 3)
    with pytest.raises(ConfigError, match=r"backbone_weights = '.*missing.keras' does not exist; train the classifier first"):
        build_model(retina("compact_cnn", opts, backbone_weights=str(tmp_path / "missing.keras"), levels=[2, 3]), (64, 64, 1), 3)
    resolve_options(retina("compact_cnn", opts, backbone_weights="runs/x/model.keras"))  # allowed for any backbone
    with pytest.raises(ConfigError, match="needs a backbone with a weights file"):
        resolve_options(retina("compact_cnn", opts, backbone_weights="x.weights.h5"))
