"""The training stage's entry point: one config, two engines (``fit`` and ``tape``).

Everything the engines share is done here: validation of the config against the data, seeding,
the distribution strategy and dtype policy, building the model inside the strategy scope, and
writing the final ``model.keras`` and the Diagnostics record into the run. What the model
learns (its loss and metrics) comes from the run's task (:mod:`tfcnn.tasks`).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from tfcnn.config import PipelineConfig
from tfcnn.data.bundle import DataBundle
from tfcnn.errors import ConfigError, TfcnnError, TrainingError
from tfcnn.models.fused_bn import with_fused_batch_norm, without_fused_batch_norm
from tfcnn.models.precision import float32_model
from tfcnn.run import Run
from tfcnn.tasks import get_task
from tfcnn.train import fit as fit_engine
from tfcnn.train import guard
from tfcnn.train import tape as tape_engine
from tfcnn.train.checks import check_train_config
from tfcnn.train.distribute import (
    LOST_PEER, global_policy, is_chief, lost_worker_error, make_strategy, precision_policy, seed_everything, worker_scratch,
)
from tfcnn.train.records import RunRecord, check_fingerprint, fingerprint
from tfcnn.train.disk import check_free_space
from tfcnn.train.finetune import Finetuner
from tfcnn.train.session import Session
from tfcnn.train.stopping import StopRules, monitors
from tfcnn.util import atomic_path, log, read_json

ENGINES: dict[str, Callable[[Session], RunRecord]] = {"fit": fit_engine.run, "tape": tape_engine.run}


@dataclass
class TrainResult:
    """What the pipeline needs after training (the files in the run directory hold the rest)."""

    model: keras.Model
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int | None
    stop_reason: str
    train_seconds: float
    images_per_second: float
    engine: str
    strategy: str
    replicas: int


def train(
    cfg: PipelineConfig,
    bundle: DataBundle,
    run: "Run | Path",
    build: Callable[[], keras.Model],
    *,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train ``build()``'s model on ``bundle`` with ``cfg.train``, writing into ``run``.

    Re-running on the same run directory resumes from its last checkpoint (tape engine) or from
    the BackupAndRestore backup of an interrupted fit. A run directory holding a run made with
    other settings (or the other engine) is refused with one line naming the first differing
    key, unless ``overwrite``, which clears its checkpoints (and model.keras) and trains afresh.
    ``callbacks`` are extra Keras callbacks; both engines call their epoch hooks (the tape
    engine after it has checkpointed the epoch).

    Non-finite weights are never saved: when the loss goes non-finite the last finite state is
    kept (``stop_reason = "non_finite_loss"``), and with none to keep
    :class:`~tfcnn.errors.TrainingError` is raised.
    """
    tc = cfg.train
    run = run if isinstance(run, Run) else Run.create(Path(run))
    task = get_task(cfg.task, cfg)
    _validate(cfg, bundle)
    if not overwrite:
        check_rerun(run, cfg)
    seed_everything(tc)
    strategy = make_strategy(tc)
    policy = precision_policy(tc, strategy)
    chief = is_chief(strategy)
    if overwrite and chief:
        _clear(run)
    out = run if chief else Run.create(worker_scratch(run.root, strategy))
    with global_policy(policy):
        with strategy.scope():
            model = build()
            if tc.fused_batch_norm:  # TensorFlow's fused kernel while training (tfcnn.models.fused_bn says why)
                model = with_fused_batch_norm(model)
    _check_model(model, bundle, task)
    if chief:
        check_free_space(run.root, int(model.count_params()), tc)
    session = Session(
        finetune=Finetuner.build(tc.finetune, model),
        cfg=cfg,
        bundle=bundle,
        run=out,
        strategy=strategy,
        model=model,
        policy=policy,
        task=task,
        steps_per_epoch=steps_per_epoch(bundle),
        callbacks=list(callbacks or []),
        chief=chief,
        resume_dir=run.path("checkpoints"),
    )
    started = time.perf_counter()
    try:
        record = ENGINES[tc.engine](session)
    except LOST_PEER as exc:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        raise TrainingError(lost_worker_error(exc, out.path("checkpoints"))) from None
    wall = time.perf_counter() - started
    record.stop_reason = record.stop_reason or "completed"
    model = save_model(session)  # what was written: float32 even when trained in mixed precision
    record.write(out, extra=_diagnostics_extra(cfg))
    log.info(f"train: {record.epochs_done} epochs in {wall:.1f} s ({record.stop_reason})")
    return TrainResult(
        model=model,
        history=record.history(),
        epochs_run=record.epochs_done,
        best_epoch=record.best_epoch,
        stop_reason=record.stop_reason,
        train_seconds=wall,
        images_per_second=record.images_per_second(),
        engine=tc.engine,
        strategy=tc.strategy,
        replicas=session.replicas,
    )


def steps_per_epoch(bundle: DataBundle) -> int:
    """Batches per epoch from the dataset's cardinality, or from the split size when unknown."""
    card = int(bundle.train.cardinality())
    if card > 0:
        return card
    x, _ = bundle.arrays["train"]
    batch = _batch_size(bundle)
    return max(math.ceil(len(x) / batch), 1)


def _batch_size(bundle: DataBundle) -> int:
    dim = bundle.train.element_spec[0].shape[0]
    return int(dim) if dim is not None else 1


def _validate(cfg: PipelineConfig, bundle: DataBundle) -> None:
    """The config-only checks (also run by config.validate), then those that need the data."""
    tc, es = cfg.train, cfg.train.early_stopping
    if bundle.info.num_train < 1:
        raise ConfigError("the training split is empty; check data.source and data.train_subset")
    check_train_config(cfg)
    if tc.reduce_lr_on_plateau and es.monitor.startswith("val_") and bundle.info.num_val == 0:
        raise ConfigError(
            f"train.reduce_lr_on_plateau watches {es.monitor!r} but the validation split is empty; "
            "set data.val_fraction > 0 or train.early_stopping.monitor = 'loss'"
        )
    StopRules.from_config(es, has_validation=bundle.info.num_val > 0, monitors=monitors(get_task(cfg.task).metric_names))


def _check_model(model: keras.Model, bundle: DataBundle, task) -> None:
    info = bundle.info
    kind = getattr(info, "label_kind", "classes")
    if kind != task.label_kind:
        raise ConfigError(
            f"the {task.name!r} task learns from {task.label_kind} but {info.source} gives {kind}; "
            f"choose a task for {kind} (task = ...) or a data.source with {task.label_kind}"
        )
    task.check_model(model, info)  # the output fits the task (classifier: one logit per class)
    want = tuple(info.input_shape)
    got = tuple(model.inputs[0].shape[1:])
    if got != want:
        raise ConfigError(f"the model takes images of shape {got} but the data has {want}; set data.image_size/channels to match")


def saved_fingerprints(run: Run) -> list[dict[str, Any]]:
    """The settings the run directory's training state was made with: the fit engine's
    fit_state and the tape engine's last checkpoint (each when present and readable)."""
    found = []
    state_path = run.path("fit_state")
    if state_path.is_file():
        try:
            saved = read_json(state_path).get("fingerprint")
        except (OSError, ValueError, AttributeError, TfcnnError):
            saved = None
        if isinstance(saved, dict) and saved:
            found.append(saved)
    ckpt = tf.train.latest_checkpoint(str(run.path("checkpoints"))) if run.path("checkpoints").is_dir() else None
    if ckpt:
        try:
            state = json.loads(tf.train.load_variable(ckpt, tape_engine.STATE_KEY).decode())
            saved = state["record"]["fingerprint"]
        except (tf.errors.OpError, ValueError, KeyError, TypeError, AttributeError):
            saved = None  # not ours: the tape engine says so when it resumes
        if isinstance(saved, dict) and saved:
            found.append(saved)
    return found


def check_rerun(run: Run, cfg: PipelineConfig) -> None:
    """Refuse to train into a run directory whose run was made with other settings or the other
    engine (one line naming the key); the same settings resume (or, for a finished fit, retrain)."""
    current = fingerprint(cfg)
    for saved in saved_fingerprints(run):
        check_fingerprint(saved, current, run.root, source="the config now says", fix=OVERWRITE_FIX)


OVERWRITE_FIX = "use a new --out directory or pass --overwrite"


def _clear(run: Run) -> None:
    """--overwrite: the run's training state and model go, so training starts afresh."""
    checkpoints = run.path("checkpoints")
    if checkpoints.exists():
        shutil.rmtree(checkpoints)
        log.info(f"train: overwrite: removed {checkpoints}")
    model = run.path("model")
    if model.exists():
        model.unlink()


def save_model(s: Session) -> keras.Model:
    """model.keras: the final (or best) weights, compiled with the task's loss and metrics.

    The file is a deployment artifact, not a training state (that is checkpoints/): it is
    compiled with a stateless SGD so it carries no optimizer slots (a third of the size for
    Adam) and no tfcnn-specific schedule, and with the loss on plain labels (no smoothing), so
    `keras.models.load_model` works in any process with or without `compile=False`. A model
    trained under a mixed precision policy is written as its float32 rebuild, and fused batch
    normalisation layers as Keras' own; returns what was written
    (the model training returns and evaluation measures).
    Non-finite weights are refused (the engines keep the last finite state; this is the last guard).
    """
    if not guard.all_finite(s.model.get_weights()):
        tc = s.cfg.train
        raise TrainingError(
            f"train: the trained weights are not finite (NaN or inf); {s.run.path('model')} was not written; "
            f"{guard.advice_for(tc.learning_rate, tc.clipnorm)}"
        )
    with s.strategy.scope():
        # Trained under mixed precision: the file computes in float32 (what every export needs;
        # tfcnn.models.precision says why), the same weights.
        # Fused batch normalisation is a training-time kernel: the file holds plain Keras layers.
        model = without_fused_batch_norm(float32_model(s.model))
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=s.cfg.train.learning_rate),
            loss=s.task.keras_loss(0.0),
            metrics=s.task.keras_metrics(0.0),
        )
        model.optimizer.build(model.trainable_variables)
    with atomic_path(s.run.path("model"), suffix=".keras") as tmp:
        model.save(tmp)
    return model


def _diagnostics_extra(cfg: PipelineConfig) -> dict:
    es = cfg.train.early_stopping
    return {
        "monitor": es.monitor if es.enabled else None,
        "restore_best": bool(es.enabled and es.restore_best),
        "target_loss": es.target_loss,
        "target_patience": es.target_patience if es.target_loss is not None else None,
    }
