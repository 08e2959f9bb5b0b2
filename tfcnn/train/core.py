"""The training stage's entry point: one config, two engines (``fit`` and ``tape``).

Everything the engines share is done here: validation of the config against the data, seeding,
the distribution strategy and dtype policy, building the model inside the strategy scope, and
writing the final ``model.keras`` and the Diagnostics record into the run. What the model
learns (its loss and metrics) comes from the run's task (:mod:`tfcnn.tasks`).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import keras

from tfcnn.config import PipelineConfig
from tfcnn.data.bundle import DataBundle
from tfcnn.errors import ConfigError
from tfcnn.run import Run
from tfcnn.tasks import get_task
from tfcnn.train import fit as fit_engine
from tfcnn.train import tape as tape_engine
from tfcnn.train.checks import check_train_config
from tfcnn.train.distribute import global_policy, is_chief, make_strategy, precision_policy, seed_everything
from tfcnn.train.records import RunRecord
from tfcnn.train.session import Session
from tfcnn.train.stopping import StopRules, monitors
from tfcnn.util import atomic_path, log

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
) -> TrainResult:
    """Train ``build()``'s model on ``bundle`` with ``cfg.train``, writing into ``run``.

    Re-running on the same run directory resumes from its last checkpoint (tape engine) or from
    the BackupAndRestore backup of an interrupted fit. ``callbacks`` are extra Keras callbacks;
    both engines call their epoch hooks (the tape engine after it has checkpointed the epoch).
    """
    tc = cfg.train
    run = run if isinstance(run, Run) else Run.create(Path(run))
    task = get_task(cfg.task)
    _validate(cfg, bundle)
    seed_everything(tc)
    strategy = make_strategy(tc)
    policy = precision_policy(tc, strategy)
    chief = is_chief(strategy)
    out = run if chief else Run.create(Path(tempfile.mkdtemp(prefix="tfcnn-worker-")))
    with global_policy(policy):
        with strategy.scope():
            model = build()
    _check_model(model, bundle)
    session = Session(
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
    record = ENGINES[tc.engine](session)
    wall = time.perf_counter() - started
    record.stop_reason = record.stop_reason or "completed"
    save_model(session)
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


def _check_model(model: keras.Model, bundle: DataBundle) -> None:
    info = bundle.info
    out = model.outputs[0].shape
    if out[-1] != info.num_classes:
        raise ConfigError(
            f"the model outputs {out[-1]} logits but the data has {info.num_classes} classes; "
            "build it with build_model(..., num_classes=info.num_classes)"
        )
    want = tuple(info.input_shape)
    got = tuple(model.inputs[0].shape[1:])
    if got != want:
        raise ConfigError(f"the model takes images of shape {got} but the data has {want}; set data.image_size/channels to match")


def save_model(s: Session) -> None:
    """model.keras: the final (or best) weights, compiled with the task's loss and metrics.

    The file is a deployment artifact, not a training state (that is checkpoints/): it is
    compiled with a stateless SGD so it carries no optimizer slots (a third of the size for
    Adam) and no tfcnn-specific schedule, and with the loss on plain labels (no smoothing), so
    `keras.models.load_model` works in any process with or without `compile=False`.
    """
    with s.strategy.scope():
        s.model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=s.cfg.train.learning_rate),
            loss=s.task.keras_loss(0.0),
            metrics=s.task.keras_metrics(0.0),
        )
        s.model.optimizer.build(s.model.trainable_variables)
    with atomic_path(s.run.path("model"), suffix=".keras") as tmp:
        s.model.save(tmp)


def _diagnostics_extra(cfg: PipelineConfig) -> dict:
    es = cfg.train.early_stopping
    return {
        "monitor": es.monitor if es.enabled else None,
        "restore_best": bool(es.enabled and es.restore_best),
        "target_loss": es.target_loss,
        "target_patience": es.target_patience if es.target_loss is not None else None,
    }
