"""train.class_weight: "balanced" or per-class weights, applied to the training loss of both
engines (class ids and mixed probability-vector labels alike), never to validation."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from test_train import make_cfg, read_history, run
from tfcnn.errors import ConfigError
from tfcnn.train.class_weights import class_weights, example_weights

NAMES = ["class_0", "class_1", "class_2"]


def test_balanced_is_scikit_learns_rule_and_explicit_weights_take_names_or_ids():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 70 + [1] * 20 + [2] * 10)
    assert class_weights("balanced", NAMES, y) == pytest.approx(compute_class_weight("balanced", classes=np.arange(3), y=y))
    assert class_weights({"class_2": 5.0, "0": 0.5}, NAMES, y) == [0.5, 1.0, 5.0]
    assert class_weights(None, NAMES, y) is None
    with pytest.raises(ConfigError, match=r"train.class_weight: 'cls_9' is not a class; give class names \('class_0'"):
        class_weights({"cls_9": 2.0}, NAMES, y)


def test_example_weights_for_ids_and_mixed_labels():
    w = tf.constant([1.0, 2.0, 4.0])
    np.testing.assert_allclose(example_weights(tf.constant([2, 0, 1]), w), [4.0, 1.0, 2.0])
    mixed = tf.constant([[0.25, 0.75, 0.0], [0.0, 0.5, 0.5]])  # a mixup image weighs as its mix
    np.testing.assert_allclose(example_weights(mixed, w), [1.75, 3.0])


@pytest.mark.parametrize("value, message", [
    ({"class_0": -1.0}, "must be a positive finite number"),
    ({"class_0": float("nan")}, "must be a positive finite number"),
    ({}, "weighs nothing"),
    ("even", "is not allowed; choose one of 'balanced'"),
])
def test_bad_class_weight_settings_are_one_line(value, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg({"class_weight": value})


@pytest.mark.parametrize("engine", ["tape", "fit"])
def test_weights_scale_the_training_loss_and_leave_validation_alone(engine, tmp_path):
    """At a learning rate too small to move the weights, weighting every class by 2 doubles the
    logged training loss exactly, and the validation loss stays the same."""
    base = {"engine": engine, "epochs": 1, "learning_rate": 1e-9, "early_stopping": {"enabled": False}}
    run(make_cfg(base), tmp_path / "plain")
    run(make_cfg({**base, "class_weight": {"class_0": 2.0, "class_1": 2.0, "class_2": 2.0}}), tmp_path / "weighted")
    (_, [plain]), (_, [weighted]) = read_history(tmp_path / "plain"), read_history(tmp_path / "weighted")
    assert float(weighted["loss"]) == pytest.approx(2 * float(plain["loss"]), rel=1e-4)
    assert float(weighted["val_loss"]) == pytest.approx(float(plain["val_loss"]), rel=1e-5)


def test_class_weight_needs_a_task_with_classes():
    from tfcnn.train import check_train_config

    cfg = make_cfg({"class_weight": "balanced"})
    check_train_config(cfg)  # a classifier: fine
    import dataclasses

    with pytest.raises(ConfigError, match="train.class_weight weighs classes, which the 'reconstruction' task does not have"):
        check_train_config(dataclasses.replace(cfg, task="reconstruction"))
