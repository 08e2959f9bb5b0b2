"""train_model: the tape engine on any Keras model and any tf.data dataset of (images, labels)."""

from __future__ import annotations

import logging
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcnn.util
from fakedata import Interrupted, interrupt_after, synthetic_arrays
from tfcnn.errors import ConfigError, DataError, TfcnnError
from tfcnn.train import TrainedModel, train_model

COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


def datasets(n_train: int = 192, n_val: int = 48, batch: int = 32):
    """16x16x1 uint8 images of 3 classes, int32 labels; shuffled (seeded) training batches."""
    keras.utils.set_random_seed(0)
    x, y = synthetic_arrays(n_train, seed=1)
    xv, yv = synthetic_arrays(n_val, seed=2)
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(n_train, seed=1).batch(batch)
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(batch)
    return train, val, (xv, yv)


def functional(*, softmax: bool = False, regularizer=None, dropout: float = 0.0, size: int = 16) -> keras.Model:
    inputs = keras.Input((size, size, 1))
    h = keras.layers.Rescaling(1 / 255.0)(inputs)
    h = keras.layers.Conv2D(4, 3, strides=2, activation="relu", kernel_regularizer=regularizer, name="conv")(h)
    if dropout:
        h = keras.layers.Dropout(dropout)(h)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(3, activation="softmax" if softmax else None, kernel_regularizer=regularizer, name="out")(h)
    return keras.Model(inputs, out)


def sequential() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )


class Net(keras.Model):
    """A subclassed model, left unbuilt: train_model builds it from the data's shape."""

    def __init__(self):
        super().__init__()
        self.scale = keras.layers.Rescaling(1 / 255.0)
        self.conv = keras.layers.Conv2D(4, 3, strides=2, activation="relu")
        self.flat = keras.layers.Flatten()
        self.out = keras.layers.Dense(3)

    def call(self, x, training=False):
        return self.out(self.flat(self.conv(self.scale(x))))


class ProbNet(Net):
    """Softmax probabilities out, through an op that is not a Softmax (Keras' losses would otherwise
    take the softmax's input as logits whatever from_logits says)."""

    def call(self, x, training=False):
        return keras.ops.softmax(super().call(x, training=training)) * 1.0


def cross_entropy(probs: np.ndarray, y: np.ndarray) -> float:
    probs = np.asarray(probs, np.float64)
    return float(-np.mean(np.log(probs[np.arange(len(y)), y])))


def softmax(logits) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def sum_sq_kernels(model: keras.Model) -> float:
    return sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in model.trainable_variables if v.name.endswith("kernel"))


def max_diff(a: keras.Model, b: keras.Model) -> float:
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a.get_weights(), b.get_weights()))


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events: list[str] = []
        self.logs: list[dict] = []

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(f"epoch_end {epoch}")
        self.logs.append(dict(logs or {}))

    def on_train_end(self, logs=None):
        self.events.append("train_end")


@pytest.fixture
def log_lines(monkeypatch):
    """tfcnn's log messages at INFO, as a script that called setup_logging sees them (not on a terminal)."""
    monkeypatch.setattr(tfcnn.util, "on_terminal", lambda: False)
    logger = logging.getLogger("tfcnn")
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler, level = Collect(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


# --------------------------------------------------------------------------- any Keras model


def test_functional_model_learns_logs_one_line_per_epoch_and_calls_callbacks(log_lines, capsys):
    train, val, _ = datasets()
    rec = Recorder()
    result = train_model(functional(), train, val, epochs=3, learning_rate=0.01, callbacks=[rec])
    assert isinstance(result, TrainedModel)
    assert (result.epochs_run, result.stop_reason, result.best_epoch, result.replicas) == (3, "completed", None, 1)
    assert list(result.history) == COLUMNS and result.history["epoch"] == [1, 2, 3] and result.epoch == [0, 1, 2]
    loss = result.history["loss"]
    assert loss[-1] < 0.7 * loss[0] and result.history["val_accuracy"][-1] > 0.8
    assert result.history["lr"] == pytest.approx([0.01] * 3) and result.images_per_second > 0
    # the Keras callback saw every epoch's logs, the same numbers as the history
    assert rec.events == ["train_begin", "epoch_end 0", "epoch_end 1", "epoch_end 2", "train_end"]
    for e, logs in enumerate(rec.logs):
        assert set(logs) == {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
        assert logs["val_loss"] == pytest.approx(result.history["val_loss"][e])
    # off a terminal: one plain log line per epoch, nothing printed
    epoch_lines = [m for m in log_lines if m.startswith("train: epoch ")]
    assert [m.split(" - ")[0] for m in epoch_lines] == ["train: epoch 1/3", "train: epoch 2/3", "train: epoch 3/3"]
    assert "val_accuracy" in epoch_lines[-1]
    assert not any("\x1b" in m or "\r" in m or "\n" in m for m in log_lines)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("kind", ["sequential", "subclassed"])
def test_sequential_and_subclassed_models_learn(kind):
    train, val, (xv, yv) = datasets()
    model = sequential() if kind == "sequential" else Net()
    result = train_model(model, train, val, epochs=3, learning_rate=0.01, early_stopping={"patience": 5})
    assert result.model is model and result.epochs_run == 3
    assert result.history["loss"][-1] < 0.7 * result.history["loss"][0]
    acc = float(np.mean(np.argmax(model(xv.astype("float32")), 1) == yv))
    assert acc == pytest.approx(result.history["val_accuracy"][-1])


@pytest.mark.filterwarnings("ignore:To make it possible to preserve tf.data options")
def test_builder_function_under_a_named_strategy():
    train, val, _ = datasets()
    result = train_model(Net, train, val, epochs=2, learning_rate=0.01, strategy="mirrored", seed=3)
    assert isinstance(result.model, Net) and result.replicas >= 1 and result.epochs_run == 2
    assert all(math.isfinite(v) for v in result.history["loss"])


def test_probabilities_output_uses_cross_entropy_of_the_probabilities():
    train, _, _ = datasets(n_train=32)  # one batch: the epoch's loss is the loss before the first update
    model = ProbNet()
    x, y = next(iter(train))
    expected = cross_entropy(model(tf.cast(x, tf.float32)), y.numpy())
    result = train_model(model, train, epochs=1, outputs="probabilities")
    assert result.history["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert math.isnan(result.history["val_loss"][0])
    train, val, _ = datasets()
    learned = train_model(functional(softmax=True), train, val, epochs=3, learning_rate=0.01, outputs="probabilities")
    assert learned.history["loss"][-1] < 0.7 * learned.history["loss"][0]


def test_l2_adds_exactly_lambda_sum_w2_and_model_losses_count():
    lam = 0.01
    train, _, _ = datasets(n_train=32)
    x, y = next(iter(train))
    model = functional()
    weights = model.get_weights()
    ce = cross_entropy(softmax(model(tf.cast(x, tf.float32))), y.numpy())
    penalty = lam * sum_sq_kernels(model)
    assert penalty > 0.02  # large enough that leaving it out fails
    result = train_model(model, train, epochs=1, l2=lam)
    assert result.history["loss"][0] == pytest.approx(ce + penalty, rel=1e-5)
    # the same penalty as the model's own keras L2 regularizers (model.losses), without l2=
    regularized = functional(regularizer=keras.regularizers.L2(lam))
    regularized.set_weights(weights)
    same = train_model(regularized, train, epochs=1)
    assert same.history["loss"][0] == pytest.approx(ce + penalty, rel=1e-5)
    assert max_diff(model, regularized) < 1e-6  # and the same gradients


def test_early_stopping_restores_the_best_epoch_and_target_loss_stops():
    train, val, (xv, yv) = datasets()
    # min_delta larger than any gain: epoch 1 stays the best, patience 1 stops after epoch 2
    model = functional()
    result = train_model(model, train, val, epochs=5, learning_rate=0.01, early_stopping={"patience": 1, "min_delta": 100.0})
    assert (result.stop_reason, result.epochs_run, result.best_epoch, result.stopped_epoch) == ("early_stopping", 2, 1, 2)
    val_loss = cross_entropy(softmax(model(xv.astype("float32"))), yv)
    assert val_loss == pytest.approx(result.history["val_loss"][0], rel=1e-4)  # the best epoch's weights
    assert val_loss != pytest.approx(result.history["val_loss"][1], rel=1e-4)
    result = train_model(
        functional(), train, epochs=5, early_stopping={"enabled": False, "target_loss": 10.0, "target_patience": 2}
    )
    assert (result.stop_reason, result.epochs_run) == ("target_loss", 2)


def test_checkpoint_resume_continues_where_it_stopped(tmp_path):
    def call(**kw):
        train, val, _ = datasets()
        opts = {"epochs": 4, "learning_rate": 0.01, "schedule": "cosine", "seed": 7, "early_stopping": {"patience": 10}}
        return train_model(lambda: functional(dropout=0.3), train, val, **{**opts, **kw})

    whole = call()
    with pytest.raises(Interrupted):
        call(checkpoint_dir=tmp_path, callbacks=[interrupt_after(2)])
    resumed = call(checkpoint_dir=tmp_path)
    assert resumed.epochs_run == 4 and resumed.resumed_at == [2]
    assert resumed.history["loss"] == pytest.approx(whole.history["loss"], rel=1e-5)
    assert resumed.history["lr"] == pytest.approx(whole.history["lr"])
    assert max_diff(whole.model, resumed.model) < 1e-5
    # a finished run called again trains nothing more
    again = call(checkpoint_dir=str(tmp_path))
    assert again.epochs_run == 4 and max_diff(resumed.model, again.model) == 0.0
    with pytest.raises(TfcnnError, match=r"train_model\.l2 = 0\.0, but this call says 0\.001") as err:
        call(checkpoint_dir=tmp_path, l2=1e-3)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- bad input: one line, before training


X, Y = synthetic_arrays(32, seed=1)
SMALL, _ = synthetic_arrays(32, size=8, seed=1)


def batches(x, y, batch: int | None = 16) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return ds.batch(batch) if batch else ds


def int_input_model() -> keras.Model:
    inputs = keras.Input((16, 16, 1), dtype="int32")
    h = keras.layers.Flatten()(keras.layers.Rescaling(1.0)(inputs))
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def conv_output_model() -> keras.Model:
    inputs = keras.Input((16, 16, 1))
    return keras.Model(inputs, keras.layers.Conv2D(3, 3)(inputs))


def one_output_model() -> keras.Model:
    inputs = keras.Input((16, 16, 1))
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(inputs)))


def built_net() -> keras.Model:
    net = Net()
    net(tf.zeros([1, 16, 16, 1]))  # built for 16x16 images
    return net


# id, error, message pattern, model, train_ds, other arguments (each made when the case runs)
BAD_INPUTS = [
    ("image shape", DataError,
     r"train_ds yields images of shape \(None, 8, 8, 1\) uint8, but the model takes \(None, 16, 16, 1\) float32",
     functional, lambda: batches(SMALL, Y), dict),
    ("image dtype", DataError, r"\(None, 16, 16, 1\) float32, but the model takes \(None, 16, 16, 1\) int32",
     int_input_model, lambda: batches(X.astype("float32"), Y), dict),
    ("val image shape", DataError, r"val_ds yields images of shape \(None, 8, 8, 1\)",
     functional, lambda: batches(X, Y), lambda: {"val_ds": batches(SMALL, Y)}),
    ("subclassed image shape", DataError, r"cannot take train_ds's images of shape \(None, 8, 8, 1\) uint8",
     built_net, lambda: batches(SMALL, Y), dict),
    ("one-hot labels", DataError, r"integer class ids; train_ds yields float32 labels of shape \(None, 3\) \(one-hot",
     functional, lambda: batches(X, np.eye(3, dtype="float32")[Y]), dict),
    ("unbatched", DataError, r"looks unbatched", functional, lambda: batches(X, Y, batch=None), dict),
    ("not a dataset", DataError, r"train_ds must be a tf.data.Dataset", functional, lambda: (X, Y), dict),
    ("output rank", ConfigError, r"outputs shape \(None, 14, 14, 3\); it must output \(batch, classes\)",
     conv_output_model, lambda: batches(X, Y), dict),
    ("one output", ConfigError, r"one score per class", one_output_model, lambda: batches(X, Y), dict),
    ("softmax as logits", ConfigError, r"ends in a softmax but outputs='logits'",
     lambda: functional(softmax=True), lambda: batches(X, Y), dict),
    ("unknown optimizer", ConfigError, r"optimizer = 'adm' is not allowed; choose one of 'adam'",
     functional, lambda: batches(X, Y), lambda: {"optimizer": "adm"}),
    ("unknown schedule", ConfigError, r"schedule = 'cosin' is not allowed; choose one of 'constant', 'cosine'",
     functional, lambda: batches(X, Y), lambda: {"schedule": "cosin"}),
    ("epochs", ConfigError, r"epochs = 0 is impossible; it must be >= 1",
     functional, lambda: batches(X, Y), lambda: {"epochs": 0}),
    ("nan learning rate", ConfigError, r"learning_rate = nan is not a finite number",
     functional, lambda: batches(X, Y), lambda: {"learning_rate": float("nan")}),
    ("lr with optimizer object", ConfigError, r"learning_rate is set, but the optimizer is a keras.optimizers.Optimizer",
     functional, lambda: batches(X, Y), lambda: {"optimizer": keras.optimizers.SGD(0.1), "learning_rate": 0.1}),
    ("monitor without val_ds", ConfigError, r"monitors 'val_loss' but there is no val_ds",
     functional, lambda: batches(X, Y), lambda: {"early_stopping": {"monitor": "val_loss"}}),
    ("unknown monitor", ConfigError, r"monitor = 'val_acc' is not recorded; choose one of loss, accuracy, val_loss, val_accuracy",
     functional, lambda: batches(X, Y), lambda: {"val_ds": batches(X, Y), "early_stopping": {"monitor": "val_acc"}}),
    ("outside the strategy scope", ConfigError, r"not made under this strategy's scope",
     functional, lambda: batches(X, Y), lambda: {"strategy": tf.distribute.MirroredStrategy(["/cpu:0"])}),
]


@pytest.mark.parametrize("error, pattern, model, data, kwargs", [pytest.param(*c[1:], id=c[0]) for c in BAD_INPUTS])
def test_bad_input_is_one_clear_line_before_training(error, pattern, model, data, kwargs):
    spy = Recorder()
    args = {"epochs": 2, **kwargs()}
    with pytest.raises(error, match=pattern) as err:
        train_model(model(), data(), callbacks=[spy], **args)
    message = str(err.value)
    assert message.startswith("train_model: ") and "\n" not in message, message
    assert spy.events == []  # nothing started


def test_labels_outside_the_model_classes_are_one_line():
    """TensorFlow finds label 5 inside the compiled step, as a multi-line InvalidArgumentError."""
    from tfcnn.errors import TrainingError

    train, _, _ = datasets()
    bad = train.map(lambda x, y: (x, y + 3))
    with pytest.raises(TrainingError) as err:
        train_model(functional(), bad, epochs=1)
    msg = str(err.value)
    assert "\n" not in msg and "train_model: a training step failed" in msg
    assert re.search(r"label value of \d which is outside the valid range of \[0, 3\)", msg), msg
