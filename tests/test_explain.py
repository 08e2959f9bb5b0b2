"""Explanations: maps land where the model looks, and `explain_images` writes every promised PNG."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from tfcnn.config import ModelConfig, from_dict
from tfcnn.data.info import DataInfo
from tfcnn.errors import TfcnnError
from tfcnn.models import build_model
from tfcnn.run import Run
from tfcnn.vis import explain
from tfcnn.vis.explain import METHODS, explain_images, gradcam, gradcam_plus_plus, saliency, scorecam

SIZE = 16


def top_right(maps: np.ndarray) -> np.ndarray:
    """Fraction of each map's mass in the top-right quadrant (rows < H/2, cols >= W/2)."""
    h, w = maps.shape[1:3]
    total = maps.sum(axis=(1, 2))
    assert np.all(total > 0), "a map is all zero, so it says nothing about where the model looks"
    return maps[:, : h // 2, w // 2 :].sum(axis=(1, 2)) / total


def quadrant_model(size: int = 32, channels: int = 1) -> keras.Model:
    """A tfcnn-framed classifier that can only see the top-right quadrant: the normalised input is
    multiplied by a 0/1 mask, and bias-free convolutions cannot make signal from zeros."""
    keras.utils.set_random_seed(3)
    mask = np.zeros((1, size, size, 1), np.float32)
    mask[:, : size // 2, size // 2 :] = 1.0
    inputs = keras.Input((size, size, channels), name="image")
    x = keras.layers.Normalization(mean=[127.5] * channels, variance=[127.5**2] * channels, name="normalize")(inputs)
    x = keras.layers.Lambda(lambda t: t * mask, name="mask")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def quadrant_data(n: int, channels: int, seed: int, size: int = SIZE, noise: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """Noise everywhere; the class is a bright horizontal bar, vertical bar or square in the top-right quadrant only."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, noise, size=(n, size, size, channels)).astype(np.float32)
    y = (np.arange(n) % 3).astype(np.int32)
    q = size // 2
    for i, label in enumerate(y):
        r, c = rng.integers(1, q - 4, size=2)
        if label == 0:
            x[i, r + 1, q + c : q + c + 4] += 160
        elif label == 1:
            x[i, r : r + 4, q + c + 1] += 160
        else:
            x[i, r : r + 3, q + c : q + c + 3] += 160
    return np.clip(x, 0, 255).astype(np.uint8), y


def trained_run(root: Path, channels: int) -> tuple[Path, keras.Model, np.ndarray, np.ndarray]:
    """A run directory (config.json, data.json, model.keras) holding tiny_cnn trained on quadrant_data."""
    keras.utils.set_random_seed(0)
    x, y = quadrant_data(300, channels, seed=channels)
    mean = x.reshape(-1, channels).mean(0).tolist()
    std = x.reshape(-1, channels).std(0).tolist()
    model = build_model(ModelConfig(name="tiny_cnn"), (SIZE, SIZE, channels), 3, mean, std)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    run = Run.create(root)
    run.save_config(from_dict({"name": "quadrant", "model": {"name": "tiny_cnn"}}))
    model.save(run.path("model"))
    run.write(DataInfo(["hbar", "vbar", "square"], (SIZE, SIZE, channels), mean, std, len(x), 0, 0, "quadrant"))
    return root, model, x, y


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("explain_rgb") / "run", 3)


def test_maps_of_a_quadrant_only_model_sit_in_that_quadrant():
    model = quadrant_model()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(4, 32, 32, 1)).astype(np.float32)
    classes = np.argmax(model.predict(x, verbose=0), axis=-1)
    sal = saliency(model, x, classes)
    # Saliency is exactly zero outside: no gradient path reaches those pixels.
    assert sal.shape == (4, 32, 32) and top_right(sal).min() == pytest.approx(1.0)
    assert top_right(saliency(model, x, classes, smooth_samples=3)).min() > 0.99
    for cam in (gradcam, gradcam_plus_plus):
        maps = cam(model, x, classes)
        assert maps.shape == (4, 32, 32) and maps.dtype == np.float32
        assert 0.0 <= maps.min() and np.allclose(maps.max(axis=(1, 2)), 1.0)  # each map scaled to [0, 1]
        assert top_right(maps).min() > 0.7, cam.__name__
    assert top_right(scorecam(model, x, classes, max_n=8)).min() > 0.7


def hottest_in_top_right(maps: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Share of each map's hottest `fraction` of pixels that lie in the top-right quadrant (chance: 0.25)."""
    n, h, w = maps.shape
    k = max(1, int(h * w * fraction))
    idx = np.argsort(maps.reshape(n, -1), axis=1)[:, -k:]
    rows, cols = np.divmod(idx, w)
    return ((rows < h // 2) & (cols >= w // 2)).mean(axis=1)


def test_trained_model_looks_at_the_quadrant_that_carries_the_signal(rgb_run):
    # A trained GAP model has gradients everywhere (noise pixels feed the average too), and a 4x4
    # CAM upsampled to 16x16 spreads out, so the claim here is about where the maps peak.
    _, model, _, _ = rgb_run
    x, y = quadrant_data(12, 3, seed=99)
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(x, verbose=0)))
    right = probs.argmax(-1) == y
    assert right.mean() >= 0.75, "the tiny model did not learn the quadrant task"
    x, y = x[right], y[right]
    for cam in (gradcam, gradcam_plus_plus, scorecam):
        assert np.median(hottest_in_top_right(cam(model, x, y))) >= 0.9, cam.__name__
    flipped = gradcam(model, x, y)[:, :, ::-1]  # the check can fail: mirrored maps peak top-left
    assert np.median(hottest_in_top_right(flipped)) < 0.25


def test_default_layer_is_the_last_feature_map_before_pooling():
    model = build_model(ModelConfig(name="tiny_cnn"), (SIZE, SIZE, 1), 3)
    assert explain.default_layer(model) == "pool2"
    assert explain.spatial_layers(model)[-1] == "pool2"
    assert explain.conv_layers(model) == ["conv1", "conv2"]
    one = gradcam(model, np.zeros((SIZE, SIZE, 1), np.float32), [1], layer="act2")
    assert one.shape == (1, SIZE, SIZE)


def test_wrong_layer_and_bad_arguments_give_one_clear_line(rgb_run, tmp_path):
    run_dir, model, x, _ = rgb_run
    with pytest.raises(TfcnnError) as err:
        gradcam(model, x[:1], [0], layer="no_such_layer")
    msg = str(err.value)
    assert "no_such_layer" in msg and "conv1" in msg and "pool2" in msg and "\n" not in msg
    with pytest.raises(TfcnnError, match="not a 4-D feature map"):
        gradcam(model, x[:1], [0], layer="gap")
    with pytest.raises(TfcnnError, match="one class index per image"):
        gradcam(model, x[:3], [0, 1])
    with pytest.raises(TfcnnError, match="out of range"):
        saliency(model, x[:1], [7])
    image = tmp_path / "one.png"
    Image.fromarray(x[0]).save(image)
    with pytest.raises(TfcnnError) as err:
        explain_images(run_dir, [image], layer="conv9", out_dir=tmp_path / "out")
    assert "conv9" in str(err.value) and "conv2" in str(err.value)
    assert not (tmp_path / "out").exists()  # failed before writing anything
    with pytest.raises(TfcnnError, match="does not exist"):
        explain_images(run_dir, [tmp_path / "missing.png"], methods=["gradcam"])
    with pytest.raises(TfcnnError, match="unknown explain method"):
        explain_images(run_dir, [image], methods=["lime"])


def _check_pngs(paths: list[Path], expected: dict[str, int]) -> None:
    """Every expected file exists, decodes as a non-empty PNG and carries the expected number of panel titles."""
    assert sorted(p.name for p in paths) == sorted(expected)
    for path in paths:
        assert path.stat().st_size > 0
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 50 and im.size[1] > 50
            im.load()
            titles = json.loads(im.text["Description"])
            assert im.text["Title"], path.name
        assert len(titles) == expected[path.name], (path.name, titles)


def _expected(stems: list[str], targets: int, num_classes: int = 3) -> dict[str, int]:
    expected = {}
    for stem in stems:
        for method in explain.MAP_METHODS:
            expected[f"{stem}_{method}.png"] = 1 + targets  # the input, then one overlay per target class
        expected[f"{stem}_feature_maps_conv1.png"] = 8
        expected[f"{stem}_feature_maps_conv2.png"] = 16
    expected["model_filters_conv1.png"] = 8
    expected["model_activation_maximization_classes.png"] = num_classes if targets == 1 else targets
    expected["model_activation_maximization_conv2.png"] = 8
    return expected


FAST = {"smooth_samples": 2, "scorecam_max_n": 4, "am_steps": 3}


def test_explain_images_writes_every_png_for_rgb(rgb_run, tmp_path):
    run_dir, _, x, _ = rgb_run
    small = tmp_path / "cat.png"
    Image.fromarray(x[0]).save(small)
    big = tmp_path / "dog photo.jpg"  # another size and format: load_image resizes it
    Image.fromarray(x[1]).resize((40, 30)).save(big)
    paths = explain_images(run_dir, [small, big], **FAST)
    assert all(p.parent == run_dir / "explain" for p in paths)
    _check_pngs(paths, _expected(["cat", "dog_photo"], targets=1))
    with Image.open(run_dir / "explain" / "cat_gradcam.png") as im:
        titles = json.loads(im.text["Description"])
    assert "predicted" in titles[0] and "%" in titles[0] and "Grad-CAM @ pool2" in titles[1]
    # Chosen classes: one overlay per class, and activation maximization of exactly those classes.
    paths = explain_images(run_dir, [small], classes=[0, 2], methods=["gradcam", "activation_maximization"],
                           out_dir=tmp_path / "chosen", **FAST)
    names = {p.name: p for p in paths}
    assert set(names) == {"cat_gradcam.png", "model_activation_maximization_classes.png",
                          "model_activation_maximization_conv2.png"}
    with Image.open(names["cat_gradcam.png"]) as im:
        assert len(json.loads(im.text["Description"])) == 3
    with Image.open(names["model_activation_maximization_classes.png"]) as im:
        assert json.loads(im.text["Description"]) == ["hbar", "square"]


def test_explain_images_writes_every_png_for_a_grayscale_pipeline_run(tiny_run, tmp_path):
    info = Run.open(tiny_run).read(DataInfo)
    img = tmp_path / "digit.png"
    Image.fromarray(np.full((20, 20), 200, np.uint8)).save(img)
    out = tmp_path / "explained"
    paths = explain_images(tiny_run, [img], out_dir=out, **FAST)
    assert all(p.parent == out for p in paths)
    _check_pngs(paths, _expected(["digit"], targets=1, num_classes=info.num_classes))
    assert set(METHODS) == set(explain.MAP_METHODS) | {"activation_maximization", "filters", "feature_maps"}


def test_activation_maximization_raises_the_target_score(rgb_run):
    _, model, _, _ = rgb_run
    # Same seed, so both runs start from the same noise: more steps must raise each class's own logit.
    start = explain.activation_maximization(model, classes=[0, 1, 2], steps=1)
    after = explain.activation_maximization(model, classes=[0, 1, 2], steps=40)
    assert after.shape == (3, SIZE, SIZE, 3) and after.min() >= 0 and after.max() <= 255
    logits_before = model.predict(start, verbose=0)
    logits_after = model.predict(after, verbose=0)
    for k in range(3):
        assert logits_after[k, k] > logits_before[k, k]
    filt = explain.activation_maximization(model, layer="conv2", filters=[0, 5], steps=5)
    assert filt.shape == (2, SIZE, SIZE, 3)


# --------------------------------------------------------------------------- 1x1 heads and constant maps (issue 11)

GD_SIZE = 32  # at 16x16 compact_cnn's last map is 4x4 and its receptive field covers the whole image


@pytest.fixture(scope="module")
def gdconv_run(tmp_path_factory):
    """The main job's architecture (compact_cnn, global depthwise conv head) at width 0.25, trained
    briefly on 32x32 quadrant images, saved as a run directory.

    Grad-CAM averages the gradient over positions, so it ignores the per-position weights of the
    gdconv head; how well it localizes varies with the seed (some seeds give a weak or even a
    ReLU-killed, constant map for a few images). Seed 0 with 20 epochs: all 24 test images right,
    median quadrant share 0.69, every argmax inside the quadrant."""
    keras.utils.set_random_seed(0)
    x, y = quadrant_data(300, 1, seed=1, size=GD_SIZE, noise=20)
    mean, std = x.reshape(-1, 1).mean(0).tolist(), x.reshape(-1, 1).std(0).tolist()
    cfg = ModelConfig(name="compact_cnn", width=0.25, options={"head": "gdconv"})
    model = build_model(cfg, (GD_SIZE, GD_SIZE, 1), 3, mean, std)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=20, batch_size=32, verbose=0)
    root = tmp_path_factory.mktemp("explain_gdconv") / "run"
    run = Run.create(root)
    run.save_config(from_dict({"name": "quadrant_gdconv", "model": {"name": "compact_cnn", "width": 0.25,
                                                                     "options": {"head": "gdconv"}}}))
    model.save(run.path("model"))
    run.write(DataInfo(["hbar", "vbar", "square"], (GD_SIZE, GD_SIZE, 1), mean, std, len(x), 0, 0, "quadrant"))
    return root, model


def test_gradcam_of_the_gdconv_head_model_is_not_flat_and_sits_on_the_object(gdconv_run):
    _, model = gdconv_run
    # The head's gdconv / gdconv_bn maps are 1x1: the walk-back must pass them.
    assert tuple(model.get_layer("gdconv_bn").output.shape[1:3]) == (1, 1)
    layer = explain.default_layer(model)
    assert layer == "s3_c2_act"
    assert all(d > 1 for d in model.get_layer(layer).output.shape[1:3])
    assert "gdconv" not in explain.spatial_layers(model) and "gdconv_bn" not in explain.spatial_layers(model)
    x, y = quadrant_data(24, 1, seed=99, size=GD_SIZE, noise=20)
    right = model.predict(x, verbose=0).argmax(-1) == y
    assert right.mean() >= 0.75, "the tiny model did not learn the quadrant task"
    maps = gradcam(model, x[right], y[right])
    assert not explain.flat_maps(maps).any()
    assert np.all(maps.max(axis=(1, 2)) - maps.min(axis=(1, 2)) > 0.5)  # min = max = 0 was the bug
    h = GD_SIZE // 2
    share = maps[:, :h, h:].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))  # chance: 0.25
    assert np.median(share) > 0.5, share
    rows, cols = np.divmod(maps.reshape(len(maps), -1).argmax(axis=1), GD_SIZE)
    assert ((rows < h) & (cols >= h)).mean() > 0.5
    mirrored = maps[:, :, ::-1]  # the check can fail: mirrored maps sit top-left
    assert np.median(mirrored[:, :h, h:].sum(axis=(1, 2)) / mirrored.sum(axis=(1, 2))) < 0.5


def test_a_1x1_layer_named_explicitly_is_one_clear_error(gdconv_run, tmp_path):
    run_dir, model = gdconv_run
    x, _ = quadrant_data(1, 1, seed=5, size=GD_SIZE)
    for name in ("gdconv", "gdconv_bn"):
        with pytest.raises(TfcnnError) as err:
            gradcam(model, x, [0], layer=name)
        msg = str(err.value)
        assert "\n" not in msg and name in msg and "1x1" in msg and "s3_c2_act" in msg, msg
        assert "gdconv," not in msg  # the 1x1 layers are not offered as choices
    image = tmp_path / "one.png"
    Image.fromarray(x[0, ..., 0]).save(image)
    with pytest.raises(TfcnnError, match="1x1 spatial output") as err:
        explain_images(run_dir, [image], layer="gdconv_bn", methods=["gradcam"], out_dir=tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
    # Feature maps and activation maximization still default to maps larger than 1x1.
    assert "gdconv" not in explain.feature_maps(model, x[0])
    assert explain.activation_maximization(model, filters=[0], steps=1).shape == (1, GD_SIZE, GD_SIZE, 1)


def test_explain_pngs_of_the_gdconv_run_use_the_default_layer_and_are_0644(gdconv_run, tmp_path):
    run_dir, _ = gdconv_run
    x, _ = quadrant_data(1, 1, seed=7, size=GD_SIZE, noise=20)
    image = tmp_path / "q.png"
    Image.fromarray(x[0, ..., 0]).save(image)
    paths = explain_images(run_dir, [image], methods=["gradcam", "gradcam_plus_plus", "filters"], **FAST)
    assert {p.name for p in paths} == {"q_gradcam.png", "q_gradcam_plus_plus.png", "model_filters_s1_c1_conv.png"}
    assert paths.notes == []
    with Image.open(run_dir / "explain" / "q_gradcam.png") as im:
        assert "Grad-CAM @ s3_c2_act" in json.loads(im.text["Description"])[1]
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


@pytest.fixture(scope="module")
def blind_run(rgb_run, tmp_path_factory):
    """rgb_run's model with an all-zero logits kernel: every class score is the bias, so no
    gradient reaches any layer and every Grad-CAM map is constant."""
    src, model, x, _ = rgb_run
    blind = keras.models.clone_model(model)
    blind.set_weights(model.get_weights())
    logits = blind.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([np.zeros_like(kernel), bias])
    root = tmp_path_factory.mktemp("explain_blind") / "run"
    run = Run.create(root)
    run.save_config(from_dict({"name": "blind", "model": {"name": "tiny_cnn"}}))
    blind.save(run.path("model"))
    run.write(Run.open(src).read(DataInfo))
    return root, blind, x


def test_a_constant_map_is_reported_not_drawn(blind_run, tmp_path):
    from tfcnn.vis import campanels, plots
    from tfcnn.vis.report import _cam_figure

    run_dir, model, x = blind_run
    maps = gradcam(model, x[:3], [0, 1, 2])
    assert explain.flat_maps(maps).all() and not maps.any()
    # tfcnn explain: a note per image, no flat PNG (and an older one is removed).
    image = tmp_path / "cat.png"
    Image.fromarray(x[0]).save(image)
    out = tmp_path / "out"
    out.mkdir()
    (out / "cat_gradcam.png").write_bytes(b"stale")
    paths = explain_images(run_dir, [image], methods=["gradcam", "filters"], out_dir=out, **FAST)
    assert [p.name for p in paths] == ["model_filters_conv1.png"]
    assert not (out / "cat_gradcam.png").exists()
    assert len(paths.notes) == 1 and paths.notes[0].startswith("cat.png: ")
    assert "Grad-CAM map is constant for layer pool2: nothing to show" in paths.notes[0]
    # The report: "not available" instead of the gallery.
    rows = campanels.prediction_rows(model, x, np.array([0, 1]), np.array([0, 0]), np.full((2, 3), 1 / 3), [0, 1],
                                     ["hbar", "vbar", "square"])
    assert campanels.flat_count(rows) == (3, 3)
    html = _cam_figure(model, rows, "t", "alt")
    assert "<img" not in html and "Not available" in html
    assert "Grad-CAM map is constant for layer pool2: nothing to show" in html
    # A figure with some constant maps: their panels say so, the others are drawn.
    fig = plots.heatmap_figure(x[0], [None, np.linspace(0, 1, SIZE * SIZE).reshape(SIZE, SIZE)], ["a", "b"],
                               input_title="in", suptitle="s", missing="not available:\nGrad-CAM map is constant")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("constant" in t for t in texts) and plots.panel_titles(fig) == ["in", "a", "b"]
    rows[0]["cams"][0] = ("c", np.linspace(0, 1, SIZE * SIZE).reshape(SIZE, SIZE))
    html = _cam_figure(model, rows, "t", "alt")
    assert html.count("<img") == 1 and "2 of 3 maps" in html
