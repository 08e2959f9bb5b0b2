"""data.classes (a subset of the classes, relabelled) and model.init_from (start a classifier from
a previous run's model.keras): the two halves of transfer between class sets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fakedata import synthetic_arrays
from test_train import CLASSES, make_cfg, run
from tfcnn.config import ModelConfig
from tfcnn.data.bundle import make_bundle
from tfcnn.errors import ConfigError
from tfcnn.models import build_model


def test_data_classes_keeps_and_relabels_the_listed_classes_in_every_split():
    cfg = make_cfg(data_opts={"classes": ["class_2", 0], "val_fraction": 0.25}).data
    train, test = synthetic_arrays(120, seed=1), synthetic_arrays(60, seed=2)
    b = make_bundle(cfg, train, test, CLASSES, "synthetic")
    assert b.info.class_names == ["class_2", "class_0"]
    for split in ("train", "val", "test"):
        x, y = b.arrays[split]
        assert set(np.unique(y)) == {0, 1}
    # relabelled, not just filtered: new 0 is old class_2 (its blob is in the lower-left cell)
    x, y = b.arrays["test"]
    assert len(y) == 40
    old_x, old_y = test
    np.testing.assert_array_equal(np.sort(x[y == 0].reshape(len(x[y == 0]), -1), 0),
                                  np.sort(old_x[old_y == 2].reshape(int((old_y == 2).sum()), -1), 0))
    # through a source (from_arrays subsets before make_bundle): data.train_subset counts kept-class images
    from tfcnn.data.inmemory import from_arrays

    sub = from_arrays(dataclasses.replace(cfg, train_subset=60), train, test, CLASSES)
    assert sub.info.num_train + sub.info.num_val == 60 and sub.info.class_names == ["class_2", "class_0"]
    for bad, message in (([0, "cat"], "'cat' is not a class of this data"), ([1, 1], "at least 2 different classes"), ([7, 0], "7 is not a class")):
        with pytest.raises(ConfigError, match=message):
            make_bundle(dataclasses.replace(cfg, classes=bad), train, test, CLASSES, "synthetic")


def test_init_from_copies_every_layer_but_the_logits_and_takes_the_normalisation(tmp_path):
    source_cfg = make_cfg({"epochs": 1, "early_stopping": {"enabled": False}}, model_opts={"name": "compact_cnn"})
    result, bundle = run(source_cfg, tmp_path / "source")
    path = str(tmp_path / "source" / "model.keras")
    assert (tmp_path / "source" / "model.keras").is_file()
    source = result.model
    # a 2-class model on other statistics: same body, new head
    model = build_model(ModelConfig(name="compact_cnn", init_from=path), (16, 16, 1), 2, [10.0], [3.0])
    for layer in source.layers:
        if layer.weights and layer.name != "logits":
            for a, b in zip(layer.get_weights(), model.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)
    assert model.get_layer("logits").get_weights()[0].shape[-1] == 2
    src_norm, new_norm = source.get_layer("normalize").get_config(), model.get_layer("normalize").get_config()
    np.testing.assert_allclose(np.ravel(new_norm["mean"]), np.ravel(src_norm["mean"]), rtol=1e-6)
    np.testing.assert_allclose(np.ravel(new_norm["variance"]), np.ravel(src_norm["variance"]), rtol=1e-5)
    with pytest.raises(ConfigError, match=r"model.init_from = .*: layer 's1_c1_conv' has weights .* in this compact_cnn"):
        build_model(ModelConfig(name="compact_cnn", width=2.0, init_from=path), (16, 16, 1), 2)
    with pytest.raises(ConfigError, match="shares no layer with this tiny_cnn"):
        build_model(ModelConfig(name="tiny_cnn", init_from=path), (16, 16, 1), 2)
    with pytest.raises(ConfigError, match="model.init_from = 'nowhere/model.keras' does not exist; train the classifier first"):
        build_model(ModelConfig(name="compact_cnn", init_from="nowhere/model.keras"), (16, 16, 1), 2)
