"""config.validate: every registry's check runs before any I/O, and none is skipped silently.

The "data" and "model" checks are the real ones (registered by importing tfcnn.data and
tfcnn.models); "task", "train" and "export" are stubbed so these tests see only what the data
source and model registries decide.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tfcnn.data  # noqa: F401  (registers the "data" check)
import tfcnn.models  # noqa: F401  (registers the "model" check)
from tfcnn import config
from tfcnn.config import DataConfig
from tfcnn.data import SOURCES, Source, load_data, parse_source, register_source
from tfcnn.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PIPELINES = sorted((REPO / "pipelines").glob("*.toml"))
STUBBED = ("task", "train", "export")


@pytest.fixture()
def checks(monkeypatch):
    """The real "data" and "model" checks plus stubs for the other expected ones (restored after)."""
    table = {name: config._CHECKS[name] for name in ("data", "model")}
    for name in STUBBED:
        table[name] = lambda cfg: None
    monkeypatch.setattr(config, "_CHECKS", table)
    return table


def validate(data: dict) -> config.PipelineConfig:
    return config.validate(config.from_dict(data))


def one_line_error(data: dict) -> str:
    with pytest.raises(ConfigError) as err:
        validate(data)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------- the machinery


def test_defaults_and_shipped_pipelines_validate(checks):
    assert validate({}).data.source == "fashion_mnist"
    for path in PIPELINES:  # folder:data/my_images validates although the folder does not exist: no I/O
        assert config.validate(config.load(path)).name


def test_a_missing_registry_is_refused_naming_the_package(checks):
    del checks["export"]
    with pytest.raises(ConfigError) as err:
        validate({})
    assert str(err.value) == (
        "the export format registry is not loaded; import tfcnn.export or call tfcnn.pipeline.validate"
    )
    del checks["task"], checks["model"]
    msg = one_line_error({})
    assert "the model registry" in msg and "the task registry" in msg and "the export format registry" in msg
    assert "are not loaded; import tfcnn.models, tfcnn.tasks, tfcnn.export or call tfcnn.pipeline.validate" in msg


def test_missing_registries_are_reported_before_any_check_runs(checks):
    """A config with a bad source still says which registry is missing (the check could not pass)."""
    del checks["train"]
    msg = one_line_error({"data": {"source": "s3://bucket"}})
    assert msg.startswith("the training checks") and "import tfcnn.train" in msg


def test_every_registered_check_runs_in_order_and_the_first_error_wins(checks):
    seen = []
    for name in STUBBED:
        checks[name] = lambda cfg, name=name: seen.append(name)
    config.register_check("zz_extra", lambda cfg: seen.append("zz_extra"))
    validate({})
    assert seen == ["task", "train", "export", "zz_extra"]

    def refuse(cfg):
        raise ConfigError("export.formats: nope")

    checks["export"] = refuse
    seen.clear()
    assert one_line_error({}) == "export.formats: nope"
    assert seen == ["task", "train"]
    # the generic cross-field rules run too, for configs built in Python rather than from_dict
    cfg = config.PipelineConfig(data=DataConfig(image_size=[28]))
    with pytest.raises(ConfigError, match=r"data.image_size = \[28\] is impossible"):
        config.validate(cfg)


def test_register_check_refuses_a_second_function_under_a_taken_name(checks):
    def mine(cfg):
        return None

    def other(cfg):
        return None

    assert config.register_check("x", mine) is mine
    config.register_check("x", mine)  # the same function again (a module reload) is fine
    with pytest.raises(ValueError, match="config check 'x' is registered twice"):
        config.register_check("x", other)
    with pytest.raises(TypeError):
        config.register_check("y", "not a function")  # type: ignore[arg-type]


def test_registry_packages_register_their_checks_on_import():
    assert config._CHECKS["data"].__module__ == "tfcnn.data.sources"
    assert config._CHECKS["model"].__module__ == "tfcnn.models.registry"
    assert config.EXPECTED_CHECKS == ("data", "model", "task", "train", "export")


# --------------------------------------------------------------------------- the "data" check


@pytest.mark.parametrize(
    "data, fragment",
    [
        # moved from test_config: the kinds are the registry's now, so validate() decides
        ({"source": "s3://bucket"}, "data.source = 's3://bucket' is not understood; use 'fashion_mnist', 'mnist', "
         "'idx:<dir>', 'tfds:<name>', 'folder:<dir>', 'numpy:<file.npz>', 'reference:<file.npz>', 'fashion_scenes', 'shapes', 'coco:<annotations.json>', 'tfds_detection:<name>', 'tfds_segmentation:<name>' or 'masks:<dir>'"),
        ({"source": "fashon_mnist"}, "is not understood (did you mean 'fashion_mnist'?)"),
        ({"source": "foldr:imgs"}, "data.source = 'foldr:imgs' is not understood (did you mean 'folder:<dir>'?)"),
        ({"source": "folder"}, "data.source = 'folder' needs an argument after 'folder:'; use 'folder:<dir>'"),
        ({"source": "numpy:"}, "data.source = 'numpy:' needs an argument after 'numpy:'; use 'numpy:<file.npz>'"),
        ({"source": "mnist:/data/mnist"}, "mnist takes no argument; use 'mnist' (a directory goes in data.path)"),
        ({"source": "tfds:CIFAR-10"}, "'CIFAR-10' is not a TensorFlow Datasets name"),
        ({"source": "numpy:x.npy"}, "names a single-array .npy file"),
        ({"source": "folder:imgs", "path": "/data"}, "data.path = '/data' is not read by folder: sources"),
        ({"source": "idx:/data/idx", "path": "/data"}, "data.path = '/data' is not read by idx: sources"),
        ({"source": "fashion_mnist", "path": " "}, "data.path is empty"),
    ],
)
def test_bad_sources_are_one_line_before_any_io(checks, data, fragment):
    assert fragment in one_line_error({"data": data})


@pytest.mark.parametrize(
    "source",
    ["fashion_mnist", "mnist", "idx:/nowhere", "folder:/nowhere", "numpy:/nowhere.npz", "tfds:cifar10",
     "tfds:mnist:3.*.*", "tfds:imagenet_resized/32x32", "tfds:huggingface:mnist"],
)
def test_good_sources_validate_without_reading_anything(checks, monkeypatch, source):
    def boom(cfg, arg):
        raise AssertionError("validate must not load data")

    for name, entry in list(SOURCES.items()):
        monkeypatch.setitem(SOURCES, name, dataclasses.replace(entry, load=boom))
    assert validate({"data": {"source": source}}).data.source == source


def test_load_data_runs_the_same_checks_through_the_registry(tmp_path):
    with pytest.raises(ConfigError, match="'s3://bucket' is not understood"):
        load_data(DataConfig(source="s3://bucket"))
    with pytest.raises(ConfigError, match="data.path = .* is not read by folder: sources"):
        load_data(DataConfig(source=f"folder:{tmp_path}", path=str(tmp_path)))


def test_a_registered_source_is_parsed_checked_and_loaded(checks, monkeypatch):
    calls = []

    def check(cfg, arg):
        if arg == "bad":
            raise ConfigError("data.source = 'fake:bad': bad is bad")

    def load(cfg, arg):
        calls.append(arg)
        return "bundle"

    monkeypatch.setitem(SOURCES, "fake", Source("fake", load, arg="thing", check=check))
    assert parse_source("fake:a:b")[1] == "a:b"  # everything after the first colon
    assert validate({"data": {"source": "fake:x"}})
    assert one_line_error({"data": {"source": "fake:bad"}}) == "data.source = 'fake:bad': bad is bad"
    assert "'fake:<thing>'" in one_line_error({"data": {"source": "nope"}})
    assert load_data(DataConfig(source="fake:y")) == "bundle" and calls == ["y"]
    with pytest.raises(ValueError, match="registered twice"):
        register_source("idx", arg="dir")(load)
    with pytest.raises(ValueError, match="without ':'"):
        register_source("a:b")


# --------------------------------------------------------------------------- the "model" check


@pytest.mark.parametrize(
    "model, fragment",
    [
        ({"name": "compact_cn"}, "model.name = 'compact_cn' is not a registered model (did you mean 'compact_cnn'?); "
         "choose one of compact_cnn, mobilenet, resnet, seed_cnn, tiny_cnn, vgg"),
        ({"name": "compact_cnn", "options": {"filterz": [8]}},
         "model.options.filterz is not an option of compact_cnn; allowed options: convs, filters, head, se_ratio"),
        ({"name": "tiny_cnn", "options": {"anything": 1}}, "model.options.anything is not an option of tiny_cnn; allowed options: none"),
        ({"name": "seed_cnn", "options": {"batch_norm": "yes"}},
         "model.options.batch_norm = 'yes' has the wrong type for seed_cnn: 'yes' is not true or false"),
        ({"name": "seed_cnn", "options": {"hidden": 12.5}}, "model.options.hidden = 12.5 has the wrong type for seed_cnn: 12.5 is not an integer"),
        ({"name": "compact_cnn", "options": {"filters": [16, "a"]}}, "entry 'a' is not an integer; expected something like [16, 40, 72]"),
        ({"name": "compact_cnn", "options": {"se_ratio": float("nan")}}, "model.options.se_ratio = nan has the wrong type for compact_cnn: nan is not a finite number"),
        ({"name": "mobilenet", "options": {"stages": [[16, 1, 1], 24]}}, "model.options.stages = [[16, 1, 1], 24] has the wrong type for mobilenet: entry 24 is not a list"),
        ({"name": "vgg", "activation": "rellu"}, "model.activation = 'rellu' is not a Keras activation"),
    ],
)
def test_bad_models_are_one_line_before_any_io(checks, model, fragment):
    assert fragment in one_line_error({"model": model})


def test_good_model_options_validate(checks):
    cfg = validate({"model": {"name": "mobilenet", "options": {"expansion": 4, "se_ratio": 1, "stages": [[8, 1, 1]]}}})
    assert cfg.model.options["expansion"] == 4  # validate does not rewrite the config


# --------------------------------------------------------------------------- cheap to import


def test_importing_the_registries_does_not_load_tensorflow_or_numpy():
    code = (
        "import sys, tfcnn.data, tfcnn.models\n"
        "from tfcnn.data import load_data, DataInfo, SOURCES\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'numpy', 'PIL') if m in sys.modules)\n"
        "print(','.join(heavy) or 'none')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=REPO)
    assert out.stdout.strip() == "none", out.stdout + out.stderr


def test_lazy_names_still_import_from_the_package():
    import tfcnn.data as data

    from tfcnn.data import DataBundle, FASHION_MNIST_CLASSES, bundle_for, from_arrays, make_bundle  # noqa: F401

    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top" and callable(bundle_for)
    assert {"load_data", "DataBundle", "bundle_for"} <= set(dir(data))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        data.nope  # noqa: B018
