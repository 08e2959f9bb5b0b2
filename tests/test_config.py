"""Pipeline files validate into typed config; every mistake is one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfcnn import config
from tfcnn.errors import ConfigError

PIPELINES = sorted(Path(__file__).parent.parent.joinpath("pipelines").glob("*.toml"))


def test_defaults_are_valid():
    cfg = config.from_dict({})
    assert cfg.train.engine == "tape"
    assert cfg.data.batch_size == 64


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_shipped_pipelines_validate(path):
    cfg = config.load(path)
    assert cfg.name


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"train": {"epoch": 3}}, "unknown key 'train.epoch'"),
        ({"trian": {}}, "unknown key 'trian'"),
        ({"train": {"epochs": "ten"}}, "train.epochs must be an integer"),
        ({"train": {"epochs": 0}}, "train.epochs = 0 is impossible"),
        ({"train": {"engine": "keras"}}, "train.engine = 'keras' is not allowed; choose one of 'tape', 'fit'"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction = 1.5 is impossible; it must be <= 0.9"),
        ({"data": {"channels": 2}}, "data.channels = 2 is not allowed"),
        ({"data": {"image_size": [28]}}, "data.image_size"),
        ({"data": {"augment": {"flip": "yes"}}}, "data.augment.flip must be true or false"),
        ({"train": {"early_stopping": {"patience": -1}}}, "train.early_stopping.patience = -1 is impossible"),
        ({"train": {"learning_rate": 0}}, "train.learning_rate = 0.0 is impossible; it must be > 0.0"),
        ({"model": {"l2": True}}, "model.l2 must be a number"),
        ({"data": {"batch_size": 5}, "train": {"strategy": "mirrored", "devices": ["/cpu:0", "/cpu:1"]}}, "divide evenly"),
    ],
)
def test_bad_values_name_the_key(data, fragment):
    with pytest.raises(ConfigError) as err:
        config.from_dict(data)
    msg = str(err.value)
    assert fragment in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "data, key",
    [
        ({"train": {"learning_rate": float("nan")}}, "train.learning_rate"),
        ({"train": {"clipnorm": float("inf")}}, "train.clipnorm"),  # Optional[float]
        ({"train": {"early_stopping": {"target_loss": float("nan")}}}, "train.early_stopping.target_loss"),
        ({"data": {"augment": {"zoom": float("-inf")}}}, "data.augment.zoom"),
        ({"evaluate": {"confident_threshold": float("nan")}}, "evaluate.confident_threshold"),
        ({"model": {"width": float("inf")}}, "model.width"),
    ],
)
def test_non_finite_floats_are_refused_naming_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        config.from_dict(data)
    msg = str(err.value)
    assert msg.startswith(f"{key} = ") and "is not a finite number" in msg and "\n" not in msg


def test_non_finite_floats_from_toml_and_overrides(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[train]\nlearning_rate = nan\n")
    with pytest.raises(ConfigError, match=r"p.toml: train.learning_rate = nan is not a finite number"):
        config.load(path)
    path.write_text("")
    with pytest.raises(ConfigError, match=r"train.weight_decay = inf is not a finite number"):
        config.load(path, ["train.weight_decay=inf"])


def test_overrides_are_typed_and_validated(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('name = "x"\n[train]\nepochs = 5\n')
    cfg = config.load(path, ["train.epochs=2", "train.engine=fit", "data.augment.flip=true", "model.l2=1e-4"])
    assert (cfg.train.epochs, cfg.train.engine, cfg.data.augment.flip, cfg.model.l2) == (2, "fit", True, 1e-4)
    with pytest.raises(ConfigError, match=r"p.toml: unknown key 'train.epoch'"):
        config.load(path, ["train.epoch=2"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        config.load(path, ["train.epochs"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)


def test_json_round_trip(tmp_path):
    cfg = config.from_dict({"name": "rt", "data": {"image_size": [32, 32]}, "train": {"devices": ["/cpu:0"]}})
    config.save(cfg, tmp_path / "config.json")
    assert config.load_json(tmp_path / "config.json") == cfg
