"""Faults in training: non-finite losses never leave non-finite weights behind, and a run
directory made with other settings (or the other engine) is refused unless overwrite=True."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from fakedata import synthetic_arrays
from tfcnn.config import from_dict
from tfcnn.data.bundle import make_bundle
from tfcnn.errors import TfcnnError, TrainingError
from tfcnn.models import build_model
from tfcnn.run import Run
from tfcnn.train import train, train_model
from tfcnn.train.guard import all_finite

CLASSES = ["class_0", "class_1", "class_2"]
ENGINES = ["tape", "fit"]


def make_cfg(train_opts: dict | None = None, model_opts: dict | None = None):
    train_section = {"epochs": 3, "learning_rate": 0.01, "tensorboard": False, **(train_opts or {})}
    return from_dict(
        {
            "data": {"source": "numpy:synthetic.npz", "batch_size": 32, "val_fraction": 0.25},
            "model": {"name": "tiny_cnn", **(model_opts or {})},
            "train": train_section,
            "export": {"enabled": False},
            "report": False,
        }
    )


def make_data(cfg, nan_inputs: bool = False):
    keras.utils.set_random_seed(cfg.train.seed)
    bundle = make_bundle(cfg.data, synthetic_arrays(96, seed=1), synthetic_arrays(30, seed=2), CLASSES, "synthetic")
    if nan_inputs:  # every image NaN: the loss is NaN from the first step
        nan = bundle.train.map(lambda x, y: (tf.fill(tf.shape(x), float("nan")), y))
        bundle = dataclasses.replace(bundle, train=nan)
    return bundle


def fit_run(cfg, run_dir: Path, callbacks=None, nan_inputs: bool = False, **kw):
    bundle = make_data(cfg, nan_inputs)
    info = bundle.info

    def build():
        return build_model(cfg.model, info.input_shape, info.num_classes, info.mean, info.std)

    return train(cfg, bundle, Run.create(Path(run_dir)), build, callbacks=callbacks, **kw)


class NaNAfter(keras.callbacks.Callback):
    """At the end of epoch `k` (1-based) remember the weights, then set every kernel to NaN, so
    epoch k+1's loss is NaN; k = 0 breaks the weights before training."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.kept: list[np.ndarray] | None = None

    def _break(self):
        self.kept = [np.array(w) for w in self.model.get_weights()]
        for v in self.model.trainable_variables:
            if v.path.endswith("kernel"):
                v.assign(tf.fill(v.shape, float("nan")))

    def on_train_begin(self, logs=None):
        if self.k == 0:
            self._break()

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.k:
            self._break()


def checkpoint_weights_finite(run_dir: Path) -> bool:
    """Every weight file the engines leave in checkpoints/ holds finite numbers."""
    ckdir = run_dir / "checkpoints"
    for index in ckdir.glob("epoch-*.index"):
        reader = tf.train.load_checkpoint(str(index)[: -len(".index")])
        for name, dtype in reader.get_variable_to_dtype_map().items():
            if dtype.is_floating and not np.isfinite(reader.get_tensor(name)).all():
                return False
    for npz_path in ckdir.glob("*.npz"):
        with np.load(npz_path) as npz:
            if not all_finite([npz[k] for k in npz.files]):
                return False
    last = ckdir / "last.weights.h5"
    if last.is_file():
        model = build_model(make_cfg().model, (16, 16, 1), 3, [0.0], [1.0])
        model.load_weights(last)
        if not all_finite(model.get_weights()):
            return False
    return True


def max_diff(a, b) -> float:
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b))


# --------------------------------------------------------------------------- non-finite losses


@pytest.mark.parametrize("engine", ENGINES)
def test_nan_in_the_first_epoch_raises_and_saves_nothing(engine, tmp_path):
    cfg = make_cfg({"engine": engine, "early_stopping": {"enabled": False}})
    with pytest.raises(TrainingError, match=r"non-finite .* in epoch 1\b.*train\.learning_rate.*clipnorm") as err:
        fit_run(cfg, tmp_path, nan_inputs=True)
    assert isinstance(err.value, TfcnnError) and "\n" not in str(err.value)
    assert not (tmp_path / "model.keras").exists()
    assert not list((tmp_path / "checkpoints").glob("epoch-*")) if (tmp_path / "checkpoints").exists() else True
    assert checkpoint_weights_finite(tmp_path)


@pytest.mark.parametrize("engine", ENGINES)
def test_nan_weights_from_the_start_raise(engine, tmp_path):
    cfg = make_cfg({"engine": engine, "early_stopping": {"enabled": False}})
    with pytest.raises(TrainingError, match=r"not finite .* before epoch 1\b"):
        fit_run(cfg, tmp_path, callbacks=[NaNAfter(0)])
    assert not (tmp_path / "model.keras").exists()
    assert checkpoint_weights_finite(tmp_path)


@pytest.mark.parametrize("engine", ENGINES)
def test_nan_in_epoch_3_keeps_the_last_finite_weights(engine, tmp_path, caplog):
    cfg = make_cfg({"engine": engine, "epochs": 4, "early_stopping": {"enabled": False}})
    breaker = NaNAfter(2)
    with caplog.at_level("INFO", logger="tfcnn"):
        result = fit_run(cfg, tmp_path, callbacks=[breaker])
    assert result.stop_reason == "non_finite_loss" and result.epochs_run == 3
    assert all_finite(result.model.get_weights())
    saved = keras.models.load_model(tmp_path / "model.keras")
    assert all_finite(saved.get_weights()) and max_diff(saved.get_weights(), breaker.kept) == 0.0
    assert checkpoint_weights_finite(tmp_path)
    diag = json.loads((tmp_path / "diagnostics.json").read_text())
    assert diag["stop_reason"] == "non_finite_loss" and diag["stopped_epoch"] == 3
    assert diag["restored_epoch"] == 2
    assert any("non-finite in epoch 3" in r.getMessage() and "epoch 2" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "checkpoints" / "backup").exists()  # the fit engine's backup went with the finished fit
    if engine == "tape":  # no checkpoint of epoch 3; a rerun resumes after epoch 2 and finishes
        assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch-*.index")) == ["epoch-1.index", "epoch-2.index"]
        again = fit_run(cfg, tmp_path)
        assert again.stop_reason == "completed" and again.epochs_run == 4
        assert json.loads((tmp_path / "diagnostics.json").read_text())["resumed_at"] == [2]


@pytest.mark.parametrize("engine", ENGINES)
def test_nan_with_restore_best_keeps_the_best_weights(engine, tmp_path):
    cfg = make_cfg({"engine": engine, "epochs": 4, "early_stopping": {"patience": 10}})
    result = fit_run(cfg, tmp_path, callbacks=[NaNAfter(2)])
    assert result.stop_reason == "non_finite_loss" and result.best_epoch in (1, 2)
    diag = json.loads((tmp_path / "diagnostics.json").read_text())
    assert diag["restored_epoch"] == result.best_epoch
    saved = keras.models.load_model(tmp_path / "model.keras")
    assert all_finite(saved.get_weights()) and checkpoint_weights_finite(tmp_path)


def _tm_data():
    keras.utils.set_random_seed(0)
    x, y = synthetic_arrays(96, seed=1)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(32)


def _tm_model():
    inputs = keras.Input((16, 16, 1))
    h = keras.layers.Rescaling(1 / 255.0)(inputs)
    h = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(h)
    out = keras.layers.Dense(3)(keras.layers.Flatten()(h))
    return keras.Model(inputs, out)


def test_train_model_nan_first_epoch_raises(tmp_path):
    nan = _tm_data().map(lambda x, y: (tf.fill(tf.shape(x), float("nan")), y))
    with pytest.raises(TrainingError, match=r"epoch 1\b.*learning_rate.*clipnorm"):
        train_model(_tm_model(), nan, epochs=2, checkpoint_dir=tmp_path)
    assert not list(tmp_path.glob("epoch-*"))


def test_train_model_nan_in_epoch_3_keeps_epoch_2(tmp_path):
    breaker = NaNAfter(2)
    result = train_model(_tm_model(), _tm_data(), epochs=4, learning_rate=0.01, callbacks=[breaker], checkpoint_dir=tmp_path)
    assert result.stop_reason == "non_finite_loss" and result.epochs_run == 3 and result.stopped_epoch == 3
    assert max_diff(result.model.get_weights(), breaker.kept) == 0.0
    for index in tmp_path.glob("epoch-*.index"):
        reader = tf.train.load_checkpoint(str(index)[: -len(".index")])
        for name, dtype in reader.get_variable_to_dtype_map().items():
            if dtype.is_floating:
                assert np.isfinite(reader.get_tensor(name)).all(), name
    assert sorted(p.name for p in tmp_path.glob("epoch-*.index")) == ["epoch-1.index", "epoch-2.index"]


# --------------------------------------------------------------------------- reruns


@pytest.mark.parametrize("first,second", [("tape", "fit"), ("fit", "tape")])
def test_engine_switch_on_a_run_directory_is_refused(first, second, tmp_path):
    fit_run(make_cfg({"engine": first, "epochs": 1}), tmp_path)
    before = (tmp_path / "model.keras").read_bytes()
    with pytest.raises(TfcnnError, match=rf"holds a run made with train\.engine = '{first}'.*'{second}'.*--overwrite") as err:
        fit_run(make_cfg({"engine": second, "epochs": 1}), tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    assert (tmp_path / "model.keras").read_bytes() == before
    result = fit_run(make_cfg({"engine": second, "epochs": 1}), tmp_path, overwrite=True)
    assert result.engine == second and result.epochs_run == 1
    assert json.loads((tmp_path / "diagnostics.json").read_text())["engine"] == second


def test_fit_rerun_with_a_changed_setting_is_refused(tmp_path):
    fit_run(make_cfg({"engine": "fit", "epochs": 1}), tmp_path)
    history = (tmp_path / "history.csv").read_text()
    with pytest.raises(TfcnnError, match=r"train\.learning_rate = 0\.01, but the config now says 0\.02"):
        fit_run(make_cfg({"engine": "fit", "epochs": 1, "learning_rate": 0.02}), tmp_path)
    assert (tmp_path / "history.csv").read_text() == history
    # the same settings still run (a finished fit retrains, as before), and overwrite=True starts afresh
    assert fit_run(make_cfg({"engine": "fit", "epochs": 1}), tmp_path).epochs_run == 1
    result = fit_run(make_cfg({"engine": "fit", "epochs": 1, "learning_rate": 0.02}), tmp_path, overwrite=True)
    assert result.history["lr"] == pytest.approx([0.02])


def test_tape_rerun_with_a_changed_setting_is_refused_unless_overwrite(tmp_path):
    fit_run(make_cfg({"epochs": 1}), tmp_path)
    with pytest.raises(TfcnnError, match=r"model\.dropout = .*--overwrite"):
        fit_run(make_cfg({"epochs": 1}, model_opts={"dropout": 0.45}), tmp_path)
    result = fit_run(make_cfg({"epochs": 1}, model_opts={"dropout": 0.45}), tmp_path, overwrite=True)
    assert result.epochs_run == 1 and json.loads((tmp_path / "diagnostics.json").read_text())["resumed_at"] == []
