"""``train_model``: tfcnn's tape engine inside your own Python training script.

Any Keras model (functional, Sequential or subclassed) and any ``tf.data.Dataset`` of
``(images, labels)`` batches with integer class ids::

    from tfcnn.train import train_model

    result = train_model(model, train_ds, val_ds, epochs=20, schedule="cosine", warmup_epochs=1,
                         l2=1e-4, early_stopping={"patience": 3}, checkpoint_dir="ckpt")
    result.history["val_accuracy"], result.best_epoch, result.stop_reason

It is the loop the pipeline's ``tape`` engine runs (:class:`tfcnn.train.tape.TapeLoop`): several
compiled steps per call, cross-replica loss scaling, the stopping rules (patience and the
course's target-loss rule) with best weights, and with ``checkpoint_dir`` one checkpoint per
epoch, so calling ``train_model`` again with the same arguments continues where it stopped.
Everything is checked before training starts; a bad argument is one :class:`~tfcnn.errors.ConfigError`
or :class:`~tfcnn.errors.DataError` line.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import keras
import tensorflow as tf

from tfcnn import config as config_mod
from tfcnn.config import EarlyStoppingConfig, TrainConfig
from tfcnn.errors import ConfigError, DataError, TrainingError
from tfcnn.tasks import get_task
from tfcnn.train import guard
from tfcnn.train.distribute import make_strategy
from tfcnn.train.optim import build_optimizer, build_schedule
from tfcnn.train.records import RunRecord, history_columns
from tfcnn.train.stopping import StopRules, monitors
from tfcnn.train.tape import TapeLoop, TapeSpec
from tfcnn.util import first_line, log

OUTPUTS = ("logits", "probabilities")
DEFAULT_LEARNING_RATE = 1e-3
STRATEGY_NAMES = {
    "MirroredStrategy": "mirrored",
    "MultiWorkerMirroredStrategy": "multi_worker",
    "TPUStrategy": "tpu",
    "_DefaultDistributionStrategy": "default",
}


@dataclass
class TrainedModel:
    """What :func:`train_model` returns: the trained model and a Keras-History-like record.

    ``history`` maps each column (``epoch`` 1-based, ``loss``, ``accuracy``, ``val_loss``,
    ``val_accuracy``, ``lr``, ``seconds``) to one value per epoch, the epochs of earlier
    (interrupted) calls included; the ``val_`` columns are NaN without a ``val_ds``. ``model``
    holds the best epoch's weights when early stopping restored them.
    """

    model: keras.Model
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int | None
    stopped_epoch: int | None
    stop_reason: str  # completed, early_stopping, target_loss, non_finite_loss or callback
    train_seconds: float  # this call's wall time
    images_per_second: float  # training steps only, all calls
    replicas: int
    resumed_at: list[int] = field(default_factory=list)  # epochs done before each resume

    @property
    def epoch(self) -> list[int]:
        """0-based epoch indices, as ``keras.callbacks.History.epoch``."""
        return [int(e) - 1 for e in self.history.get("epoch", [])]


def train_model(
    model: "keras.Model | Callable[[], keras.Model]",
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset | None = None,
    *,
    epochs: int,
    optimizer: "str | keras.optimizers.Optimizer" = "adam",
    learning_rate: float | None = None,
    l2: float | None = None,
    weight_decay: float | None = None,
    label_smoothing: float = 0.0,
    clipnorm: float | None = None,
    early_stopping: "None | bool | Mapping[str, Any] | EarlyStoppingConfig" = None,
    schedule: str = "constant",
    warmup_epochs: float = 0.0,
    checkpoint_dir: "str | Path | None" = None,
    strategy: "tf.distribute.Strategy | str | None" = None,
    callbacks: Sequence[keras.callbacks.Callback] | None = (),
    outputs: Literal["logits", "probabilities"] = "logits",
    steps_per_epoch: int | None = None,
    steps_per_execution: int = 16,
    jit_compile: bool = False,
    seed: int | None = None,
) -> TrainedModel:
    """Train ``model`` on ``train_ds`` with tfcnn's tape engine; returns a :class:`TrainedModel`.

    * ``model``: a Keras model, or a function building one (called inside ``strategy``'s scope,
      after seeding, which a model made beforehand for a named strategy cannot be). It returns
      ``(batch, classes)``: ``outputs="logits"`` (no softmax) or ``"probabilities"`` (softmax);
      the cross-entropy uses ``from_logits`` accordingly.
    * ``train_ds`` / ``val_ds``: ``tf.data.Dataset`` of ``(images, labels)`` batches, labels
      integer class ids of shape ``(batch,)``; images are cast to the model's input dtype.
      ``train_ds`` is iterated once per epoch (``steps_per_epoch`` batches when it repeats forever).
    * ``optimizer``: ``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9), ``"rmsprop"`` with
      ``learning_rate`` (default 1e-3), ``schedule`` (``"constant"``, ``"cosine"``,
      ``"exponential"``, ``"step"``, ``"onecycle"``), ``warmup_epochs`` and decoupled
      ``weight_decay`` (kernels only); or a ``keras.optimizers.Optimizer`` you configured, in
      which case those four stay unset.
    * ``l2``: adds ``l2 * sum(w**2)`` over every trainable kernel to the loss, on top of the
      model's own regularizers (``model.losses``, always counted).
    * ``early_stopping``: None (off), True (defaults) or a dict / :class:`EarlyStoppingConfig`
      with ``monitor`` (default ``"val_loss"``, ``"loss"`` without ``val_ds``), ``patience``,
      ``min_delta``, ``mode``, ``restore_best``, ``target_loss``, ``target_patience``, ``enabled``.
    * ``checkpoint_dir``: one checkpoint per epoch; calling again with the same directory and
      arguments resumes after the last finished epoch (more ``epochs`` continue the run).
    * ``strategy``: a ``tf.distribute.Strategy`` (build the model in its scope) or a name
      (``"default"``, ``"mirrored"``, ``"multi_worker"``, ``"tpu"``).
    * ``callbacks``: Keras callbacks; their train and epoch hooks are called (``on_epoch_end``
      with the epoch's logs and ``learning_rate``), ``model.stop_training = True`` stops.
    * ``seed``: when given, ``keras.utils.set_random_seed(seed)`` before anything is built.

    Progress goes through the ``tfcnn`` logger: a progress bar on a terminal, else one line per epoch.
    """
    task = get_task("classification")
    if outputs not in OUTPUTS:
        raise ConfigError(f"train_model: outputs = {outputs!r} is not allowed; choose one of 'logits', 'probabilities'")
    callbacks = _callbacks(callbacks)
    lam = _l2(l2)
    named = _optimizer_name(optimizer)
    if named is None:
        _refuse_with_instance(learning_rate, schedule, warmup_epochs, weight_decay)
    tc = _train_config(
        {
            "epochs": epochs,
            "optimizer": named or "adam",
            "learning_rate": DEFAULT_LEARNING_RATE if learning_rate is None else learning_rate,
            "schedule": schedule,
            "warmup_epochs": warmup_epochs,
            "weight_decay": 0.0 if weight_decay is None else weight_decay,
            "label_smoothing": label_smoothing,
            "clipnorm": clipnorm,
            "steps_per_execution": steps_per_execution,
            "jit_compile": jit_compile,
            "seed": 42 if seed is None else seed,
            "strategy": strategy if isinstance(strategy, str) else "default",
            "early_stopping": _early_stopping(early_stopping, has_validation=val_ds is not None),
            "tensorboard": False,
            "gradient_norms": False,
        }
    )
    es = tc.early_stopping
    allowed = monitors(task.metric_names)
    if es.monitor not in allowed:
        raise ConfigError(
            f"train_model: early_stopping monitor = {es.monitor!r} is not recorded; choose one of {', '.join(allowed)}"
        )
    if es.enabled and es.monitor.startswith("val_") and val_ds is None:
        raise ConfigError(
            f"train_model: early_stopping monitors {es.monitor!r} but there is no val_ds; pass val_ds or monitor 'loss'"
        )
    if steps_per_epoch is not None:
        steps_per_epoch = _count("steps_per_epoch", steps_per_epoch)
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, Path)):
        raise ConfigError(f"train_model: checkpoint_dir must be a path, got {type(checkpoint_dir).__name__}")

    strat, strategy_name = _strategy(strategy, tc)
    if seed is not None:
        keras.utils.set_random_seed(tc.seed)
    net = _model(model, strat)

    x_spec, _ = _element_spec(train_ds, "train_ds")
    if val_ds is not None:
        _element_spec(val_ds, "val_ds")
    input_dtype, classes = _check_model(net, strat, train_ds, val_ds, x_spec)
    _check_outputs_kind(net, outputs)
    _check_variables(net, strat)
    spe = _steps_per_epoch(train_ds, steps_per_epoch)
    if val_ds is not None:
        card = int(val_ds.cardinality())
        if card == tf.data.INFINITE_CARDINALITY:
            raise DataError("train_model: val_ds repeats forever; validation needs a finite dataset (drop .repeat())")
        if card == 0:
            raise DataError("train_model: val_ds is empty; pass val_ds=None to train without validation")

    if named is not None:
        try:
            lr_schedule = build_schedule(tc, spe)
        except ConfigError as exc:
            raise ConfigError(_api_message(str(exc))) from None

        def make_optimizer() -> keras.optimizers.Optimizer:
            return build_optimizer(tc, lr_schedule, clipnorm=False)

    else:
        make_optimizer = _instance_optimizer(optimizer, strat)

    smoothing = float(tc.label_smoothing)
    loss_fn = task.loss_fn(classes, smoothing, from_logits=outputs == "logits")
    checkpoints = Path(checkpoint_dir) if checkpoint_dir is not None else None
    record = RunRecord(
        engine="tape",
        strategy=strategy_name,
        replicas=int(strat.num_replicas_in_sync),
        policy=net.dtype_policy.name,
        fingerprint=_fingerprint(tc, named or type(optimizer).__name__, lam, outputs, spe, x_spec, train_ds),
        columns=list(history_columns(task.metric_names)),
    )
    spec = TapeSpec(
        model=net,
        strategy=strat,
        train=train_ds,
        val=val_ds,
        steps_per_epoch=spe,
        epochs=tc.epochs,
        loss_fn=loss_fn,
        make_metrics=lambda: task.keras_metrics(0.0),
        make_optimizer=make_optimizer,
        rules=StopRules.from_config(es, has_validation=val_ds is not None, monitors=allowed),
        record=record,
        restore_best=es.enabled and es.restore_best,
        loss_scaled=_uses_float16(net),
        l2=lam,
        clipnorm=tc.clipnorm,
        gradient_norms=False,
        jit_compile=tc.jit_compile,
        steps_per_execution=tc.steps_per_execution,
        input_dtype=input_dtype,
        checkpoint_dir=checkpoints,
        callbacks=callbacks,
        images_per_epoch=None,
        fingerprint_source="this call says",
        fingerprint_fix="pass another checkpoint_dir, or delete this one to start over",
        nan_advice=(
            guard.advice_for(tc.learning_rate, tc.clipnorm, prefix="")
            if named is not None
            else "lower the optimizer's learning rate or pass clipnorm (e.g. 1.0)"
        ),
    )
    started = time.perf_counter()
    try:
        record = TapeLoop(spec).run()
    except tf.errors.InvalidArgumentError as exc:  # e.g. a label outside [0, classes): TF finds it inside the step
        # (Not pre-checked by reading a batch: a second iterator would shift a reshuffling dataset's
        # epochs, so the same call would train on other batches than without the check.)
        raise TrainingError(f"train_model: a training step failed: {_tf_reason(exc)}; check the dataset's labels and shapes") from None
    wall = time.perf_counter() - started
    record.stop_reason = record.stop_reason or "completed"
    log.info(f"train: {record.epochs_done} epochs in {wall:.1f} s ({record.stop_reason})")
    return TrainedModel(
        model=net,
        history=record.history(),
        epochs_run=record.epochs_done,
        best_epoch=record.best_epoch,
        stopped_epoch=record.stopped_epoch,
        stop_reason=record.stop_reason,
        train_seconds=wall,
        images_per_second=record.images_per_second(),
        replicas=record.replicas,
        resumed_at=list(record.resumed_at),
    )


# --------------------------------------------------------------------------- argument checks


def _api_message(msg: str) -> str:
    """A config error about ``train.x`` reworded for the keyword argument ``x``."""
    return "train_model: " + msg.replace("[train.", "[").replace("'train.", "'").replace("train.", "")


def _plain(value: Any) -> Any:
    """NumPy scalars as Python numbers (the config checks want int and float)."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, dict, list)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def _train_config(values: dict[str, Any]) -> TrainConfig:
    """The arguments as a validated TrainConfig (ranges, types, names), errors in train_model's words."""
    plain = {k: (_plain(v) if not isinstance(v, dict) else {kk: _plain(vv) for kk, vv in v.items()}) for k, v in values.items()}
    plain = {k: v for k, v in plain.items() if v is not None}
    try:
        return config_mod.from_dict({"train": plain}).train
    except ConfigError as exc:
        raise ConfigError(_api_message(str(exc))) from None


def _early_stopping(value: Any, *, has_validation: bool) -> dict[str, Any]:
    if value is None or value is False:
        return {"enabled": False}
    if value is True:
        value = {}
    if isinstance(value, EarlyStoppingConfig):
        return dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise ConfigError(
            "train_model: early_stopping must be None, True, a dict (monitor, patience, min_delta, restore_best, "
            f"target_loss, target_patience) or an EarlyStoppingConfig, got {type(value).__name__}"
        )
    out = dict(value)
    out.setdefault("monitor", "val_loss" if has_validation else "loss")
    return out


def _callbacks(callbacks: Any) -> list[keras.callbacks.Callback]:
    if callbacks is None:
        return []
    if isinstance(callbacks, keras.callbacks.Callback):
        return [callbacks]
    out = list(callbacks)
    for cb in out:
        if not isinstance(cb, keras.callbacks.Callback):
            raise ConfigError(f"train_model: callbacks must be keras.callbacks.Callback objects, got {type(cb).__name__}")
    return out


def _l2(l2: Any) -> float | None:
    if l2 is None:
        return None
    value = _plain(l2)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"train_model: l2 = {l2!r} is impossible; give a finite number >= 0 (or None)")
    return float(value) or None


def _count(name: str, value: Any) -> int:
    v = _plain(value)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"train_model: {name} = {value!r} is impossible; it must be an integer >= 1")
    return v


def _optimizer_name(optimizer: Any) -> str | None:
    """The name of a named optimizer, None for an optimizer object (one error line for anything else)."""
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return None
    if isinstance(optimizer, str):
        return optimizer.lower()
    raise ConfigError(
        "train_model: optimizer must be 'adam', 'adamw', 'sgd', 'rmsprop' or a keras.optimizers.Optimizer, "
        f"got {type(optimizer).__name__}"
    )


def _refuse_with_instance(learning_rate: Any, schedule: Any, warmup_epochs: Any, weight_decay: Any) -> None:
    """An optimizer object brings its own learning rate; refuse settings that would be ignored."""
    clashes = [
        name
        for name, given in (
            ("learning_rate", learning_rate is not None),
            ("schedule", schedule != "constant"),
            ("warmup_epochs", bool(warmup_epochs)),
            ("weight_decay", bool(weight_decay)),
        )
        if given
    ]
    if clashes:
        raise ConfigError(
            f"train_model: {clashes[0]} is set, but the optimizer is a keras.optimizers.Optimizer object with its own; "
            "configure the optimizer object, or pass optimizer='adam' (or 'adamw', 'sgd', 'rmsprop') by name"
        )


def _strategy(strategy: Any, tc: TrainConfig) -> tuple[tf.distribute.Strategy, str]:
    if strategy is None:
        strat = tf.distribute.get_strategy()
        return strat, STRATEGY_NAMES.get(type(strat).__name__, type(strat).__name__)
    if isinstance(strategy, str):
        try:
            return make_strategy(tc), tc.strategy
        except ConfigError as exc:
            raise ConfigError(_api_message(str(exc))) from None
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy, STRATEGY_NAMES.get(type(strategy).__name__, type(strategy).__name__)
    raise ConfigError(
        "train_model: strategy must be a tf.distribute.Strategy or one of 'default', 'mirrored', 'multi_worker', "
        f"'tpu', got {type(strategy).__name__}"
    )


def _model(model: Any, strat: tf.distribute.Strategy) -> keras.Model:
    if isinstance(model, keras.Model):
        return model
    if callable(model):
        with strat.scope():
            built = model()
        if not isinstance(built, keras.Model):
            raise ConfigError(f"train_model: the model function returned {type(built).__name__}, not a keras.Model")
        return built
    raise ConfigError(f"train_model: model must be a keras.Model or a function that builds one, got {type(model).__name__}")


# --------------------------------------------------------------------------- data and model checks


def _shape(shape: Any) -> str:
    dims = getattr(shape, "as_list", lambda: list(shape))() if shape is not None else None
    if dims is None:
        return "(unknown)"
    return "(" + ", ".join("None" if d is None else str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _element_spec(ds: Any, name: str) -> tuple[tf.TensorSpec, tf.TensorSpec]:
    """``(images_spec, labels_spec)`` of a dataset of (images, integer labels) batches, or one error line."""
    if not isinstance(ds, tf.data.Dataset):
        raise DataError(
            f"train_model: {name} must be a tf.data.Dataset of (images, labels) batches, got {type(ds).__name__} "
            "(wrap arrays with tf.data.Dataset.from_tensor_slices((x, y)).batch(n))"
        )
    spec = ds.element_spec
    if isinstance(spec, Mapping):
        raise DataError(
            f"train_model: {name} yields dicts ({', '.join(map(str, spec))}), not (images, labels) pairs; "
            "map them, e.g. ds.map(lambda d: (d['image'], d['label'])) or tfds.load(..., as_supervised=True)"
        )
    if not isinstance(spec, tuple) or len(spec) != 2 or not all(isinstance(s, tf.TensorSpec) for s in spec):
        raise DataError(f"train_model: {name} must yield (images, labels) pairs of tensors; its elements are {spec}")
    x, y = spec
    if not y.dtype.is_integer:
        hint = " (one-hot? map them with tf.argmax(labels, axis=-1))" if y.dtype.is_floating and y.shape.rank == 2 else ""
        raise DataError(
            f"train_model: labels must be integer class ids; {name} yields {y.dtype.name} labels of shape "
            f"{_shape(y.shape)}{hint}"
        )
    if y.shape.rank == 0:
        raise DataError(f"train_model: {name} looks unbatched (labels of shape ()); batch it, e.g. {name}.batch(32)")
    if y.shape.rank is not None and y.shape.rank != 1:
        raise DataError(
            f"train_model: labels must have shape (batch,), one class id per image; {name} yields {_shape(y.shape)}"
        )
    if not (x.dtype.is_floating or x.dtype.is_integer):
        raise DataError(f"train_model: {name} yields {x.dtype.name} images; decode them to numbers first")
    return x, y


def _castable(src: tf.DType, dst: tf.DType) -> bool:
    """Images the loop may cast to the model's input dtype: the same, or integers/floats to a float."""
    return src == dst or (dst.is_floating and (src.is_floating or src.is_integer)) or (dst.is_integer and src.is_integer)


def _model_inputs(model: keras.Model) -> list | None:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return list(inputs) if inputs else None


def _model_outputs(model: keras.Model) -> list | None:
    try:
        outs = model.outputs
    except (AttributeError, ValueError):
        return None
    return list(outs) if outs else None


def _check_model(
    model: keras.Model,
    strat: tf.distribute.Strategy,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset | None,
    x_spec: tf.TensorSpec,
) -> tuple[tf.DType, int]:
    """The images fit the model's input and it outputs (batch, classes); returns (input dtype, classes)."""
    inputs = _model_inputs(model)
    if inputs is not None:
        if len(inputs) != 1:
            raise ConfigError(f"train_model: the model takes {len(inputs)} inputs; it must take one batch of images")
        want = inputs[0]
        dtype = tf.as_dtype(want.dtype)
        for name, ds in (("train_ds", train_ds), ("val_ds", val_ds)):
            if ds is None:
                continue
            got = ds.element_spec[0]
            shape_ok, dtype_ok = _compatible(got.shape, want.shape), _castable(got.dtype, dtype)
            if not (shape_ok and dtype_ok):
                fix = "resize or reshape the images, or build the model for them" if not shape_ok else (
                    f"cast the images ({name}.map) or build the model for {got.dtype.name} input"
                )
                raise DataError(
                    f"train_model: {name} yields images of shape {_shape(got.shape)} {got.dtype.name}, but the model "
                    f"takes {_shape(want.shape)} {dtype.name}; {fix}"
                )
        outs = _model_outputs(model)
        if outs is None:  # pragma: no cover - a model with inputs has outputs
            raise ConfigError("train_model: the model has inputs but no outputs")
        if len(outs) != 1:
            raise ConfigError(f"train_model: the model has {len(outs)} outputs; it must output one (batch, classes) tensor")
        out_shape = tuple(outs[0].shape)
    else:
        # A subclassed (or not yet built) model: call it once on a zero batch shaped like the data.
        dtype = tf.float32
        dims = x_spec.shape.as_list() if x_spec.shape.rank is not None else None
        if dims is None or any(d is None for d in dims[1:]):
            raise DataError(
                f"train_model: train_ds yields images of shape {_shape(x_spec.shape)}, which a subclassed model cannot be "
                "checked against; give the images a fixed size (or build the model first with model(batch))"
            )
        if val_ds is not None:
            got = val_ds.element_spec[0]
            if not _compatible(got.shape, x_spec.shape):
                raise DataError(
                    f"train_model: val_ds yields images of shape {_shape(got.shape)}, train_ds {_shape(x_spec.shape)}; "
                    "they must match"
                )
        probe = tf.zeros([2, *dims[1:]], dtype)
        try:
            with strat.scope():
                out = model(probe, training=False)
        except Exception as exc:  # noqa: BLE001 - whatever the model raises, one line naming both shapes
            raise DataError(
                f"train_model: the model cannot take train_ds's images of shape {_shape(x_spec.shape)} "
                f"{x_spec.dtype.name} ({_reason(exc)})"
            ) from None
        if not isinstance(out, (tf.Tensor, tf.Variable)) and not hasattr(out, "shape"):
            raise ConfigError(
                f"train_model: the model returns {type(out).__name__}; it must return one (batch, classes) tensor"
            )
        out_shape = (None, *tuple(out.shape)[1:])
    if len(out_shape) != 2:
        raise ConfigError(
            f"train_model: the model outputs shape {_shape(out_shape)}; it must output (batch, classes), one score per "
            "class (end it with e.g. GlobalAveragePooling2D/Flatten and Dense(classes))"
        )
    classes = out_shape[-1]
    if classes is None or int(classes) < 2:
        raise ConfigError(
            f"train_model: the model outputs shape {_shape(out_shape)}; a classifier needs one score per class (2 or more)"
        )
    return dtype, int(classes)


def _tf_reason(exc: BaseException) -> str:
    """The informative line of a TF runtime error (its message, without the op and graph trail)."""
    lines = [ln.strip() for ln in str(getattr(exc, "message", exc)).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("[[", "Traceback", "File ", "Detected at node", "Graph execution error"))
              and not ln.endswith(":")]
    return first_line(Exception(useful[0] if useful else type(exc).__name__), 240)


def _reason(exc: BaseException) -> str:
    """The informative line of an error from a model call (Keras wraps it in "Exception encountered
    when calling ..." and ANSI bold)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Exception encountered")]
    return f"{type(exc).__name__}: {first_line(Exception(lines[0]) if lines else exc, 200)}"


def _compatible(got: tf.TensorShape, want: Any) -> bool:
    got = tf.TensorShape(got)
    want = tf.TensorShape(list(want))
    return got.is_compatible_with(want)


def _last_layer(model: keras.Model) -> Any:
    outs = _model_outputs(model)
    if outs is None:
        return None
    history = getattr(outs[0], "_keras_history", None)
    return getattr(history, "operation", None) if history is not None else None


def _ends_in_softmax(model: keras.Model) -> bool | None:
    """True when the output layer is a softmax, False when it is a Dense/Conv without activation, else unknown."""
    layer = _last_layer(model)
    if layer is None:
        return None
    if isinstance(layer, keras.layers.Softmax):
        return True
    act = getattr(getattr(layer, "activation", None), "__name__", None)
    if act == "softmax":
        return True
    if act == "linear" and isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
        return False
    return None


def _check_outputs_kind(model: keras.Model, outputs: str) -> None:
    softmax = _ends_in_softmax(model)
    if outputs == "logits" and softmax is True:
        raise ConfigError(
            "train_model: the model ends in a softmax but outputs='logits'; pass outputs='probabilities' "
            "(or drop the softmax)"
        )
    if outputs == "probabilities" and softmax is False:
        raise ConfigError(
            f"train_model: outputs='probabilities' but the model's last layer ({_last_layer(model).name}) has no "
            "activation, so it returns logits; pass outputs='logits' or end the model in a softmax"
        )


def _check_variables(model: keras.Model, strat: tf.distribute.Strategy) -> None:
    if not model.weights:
        raise ConfigError("train_model: the model has no weights to train")
    extended = strat.extended
    for v in model.variables:
        raw = getattr(v, "value", v)
        if not extended.variable_created_in_scope(raw):
            raise ConfigError(
                "train_model: the model's variables were not made under this strategy's scope; build it inside "
                "`with strategy.scope():`, or pass a function that builds it (train_model(make_model, ...))"
            )


def _steps_per_epoch(train_ds: tf.data.Dataset, given: int | None) -> int:
    card = int(train_ds.cardinality())
    if given is not None:
        return given
    if card == tf.data.INFINITE_CARDINALITY:
        raise DataError("train_model: train_ds repeats forever; pass steps_per_epoch (batches per epoch)")
    if card == tf.data.UNKNOWN_CARDINALITY:
        card = int(train_ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
        log.info(f"train: train_ds has {card} batches per epoch (counted: its length is unknown)")
    if card == 0:
        raise DataError("train_model: train_ds is empty")
    return card


def _instance_optimizer(optimizer: keras.optimizers.Optimizer, strat: tf.distribute.Strategy):
    """The caller's optimizer, or a copy made inside the strategy's scope when it was made outside."""
    inside = strat.extended.variable_created_in_scope(getattr(optimizer.iterations, "value", optimizer.iterations))

    def make() -> keras.optimizers.Optimizer:
        if inside:
            return optimizer
        log.info("train: the optimizer was made outside the strategy's scope; training a copy made inside it")
        return type(optimizer).from_config(optimizer.get_config())

    return make


def _uses_float16(model: keras.Model) -> bool:
    """A mixed_float16 model needs loss scaling (bfloat16 does not)."""
    names = {model.dtype_policy.name, *(getattr(getattr(l, "dtype_policy", None), "name", "") for l in model.layers)}
    return "mixed_float16" in names


def _fingerprint(
    tc: TrainConfig,
    optimizer: str,
    lam: float | None,
    outputs: str,
    steps_per_epoch: int,
    x_spec: tf.TensorSpec,
    train_ds: tf.data.Dataset,
) -> dict[str, Any]:
    """What a checkpoint depends on; epochs, early stopping and steps_per_execution may change on resume."""
    y_spec = train_ds.element_spec[1]
    return {
        "train_model": {
            "optimizer": optimizer,
            "learning_rate": tc.learning_rate,
            "schedule": tc.schedule,
            "warmup_epochs": tc.warmup_epochs,
            "weight_decay": tc.weight_decay,
            "l2": lam or 0.0,
            "label_smoothing": tc.label_smoothing,
            "clipnorm": tc.clipnorm,
            "outputs": outputs,
            "steps_per_epoch": steps_per_epoch,
            "images": f"{_shape(x_spec.shape)} {x_spec.dtype.name}",
            "labels": f"{_shape(y_spec.shape)} {y_spec.dtype.name}",
        }
    }


__all__ = ["TrainedModel", "train_model"]
