"""The training stage's entry point: one config, two engines (``fit`` and ``tape``).

Everything the engines share lives here: validation of the config against the data, seeding,
the distribution strategy and dtype policy, building the model inside the strategy scope,
and writing the final ``model.keras`` and diagnostics into the run directory.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import keras
import tensorflow as tf

from tfcnn.config import PipelineConfig
from tfcnn.data.bundle import DataBundle
from tfcnn.errors import ConfigError
from tfcnn.rundir import RunDir
from tfcnn.train.distribute import global_policy, is_chief, make_strategy, precision_policy, seed_everything
from tfcnn.train.records import RunRecord, fingerprint
from tfcnn.train.stopping import MONITORS, StopRules


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


@dataclass
class Session:
    """One call of :func:`train`: what an engine needs to run (built by :func:`train`)."""

    cfg: PipelineConfig
    bundle: DataBundle
    rd: RunDir
    strategy: tf.distribute.Strategy
    model: keras.Model
    policy: str
    quiet: bool
    steps_per_epoch: int
    callbacks: list[keras.callbacks.Callback] = field(default_factory=list)
    chief: bool = True
    # Where to resume from: the run directory's checkpoints, also for non-chief workers, which
    # write their own checkpoints to a scratch `rd` but must restore the chief's state.
    resume_dir: Path | None = None

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def has_validation(self) -> bool:
        return self.bundle.info.num_val > 0

    def new_record(self) -> RunRecord:
        return RunRecord(
            engine=self.cfg.train.engine,
            strategy=self.cfg.train.strategy,
            replicas=self.replicas,
            policy=self.policy,
            fingerprint=fingerprint(self.cfg),
        )

    def new_rules(self) -> StopRules:
        return StopRules.from_config(self.cfg.train.early_stopping, has_validation=self.has_validation)

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)


def train(
    cfg: PipelineConfig,
    bundle: DataBundle,
    run_dir: Path,
    build_fn: Callable[[], keras.Model],
    *,
    quiet: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
) -> TrainResult:
    """Train ``build_fn()``'s model on ``bundle`` with ``cfg.train``, writing into ``run_dir``.

    Re-running on the same ``run_dir`` resumes from its last checkpoint (tape engine) or from
    the BackupAndRestore backup of an interrupted fit. ``callbacks`` are extra Keras callbacks;
    both engines call their epoch hooks (the tape engine after it has checkpointed the epoch).
    """
    from tfcnn.train import fit as fit_engine
    from tfcnn.train import tape as tape_engine

    tc = cfg.train
    rd = RunDir(Path(run_dir))
    rd.root.mkdir(parents=True, exist_ok=True)
    _validate(cfg, bundle)
    seed_everything(tc)
    strategy = make_strategy(tc)
    policy = precision_policy(tc, strategy)
    chief = is_chief(strategy)
    out = rd if chief else RunDir(Path(tempfile.mkdtemp(prefix="tfcnn-worker-")))
    with global_policy(policy):
        with strategy.scope():
            model = build_fn()
    _check_model(model, bundle)
    session = Session(
        cfg=cfg,
        bundle=bundle,
        rd=out,
        strategy=strategy,
        model=model,
        policy=policy,
        quiet=quiet,
        steps_per_epoch=steps_per_epoch(bundle),
        callbacks=list(callbacks or []),
        chief=chief,
        resume_dir=rd.checkpoints,
    )
    started = time.perf_counter()
    engine = tape_engine.run if tc.engine == "tape" else fit_engine.run
    record = engine(session)
    wall = time.perf_counter() - started
    record.stop_reason = record.stop_reason or "completed"
    save_model(session)
    record.write(out, extra=_diagnostics_extra(cfg))
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
    tc, es = cfg.train, cfg.train.early_stopping
    if bundle.info.num_train < 1:
        raise ConfigError("the training split is empty; check data.source and data.train_subset")
    if es.monitor not in MONITORS:
        raise ConfigError(f"train.early_stopping.monitor = {es.monitor!r} is not recorded; choose one of {', '.join(MONITORS)}")
    if tc.reduce_lr_on_plateau:
        if tc.schedule != "constant" or tc.warmup_epochs > 0:
            raise ConfigError(
                f"train.reduce_lr_on_plateau needs schedule = 'constant' without warm-up (got schedule = {tc.schedule!r}, "
                f"warmup_epochs = {tc.warmup_epochs}); a schedule already sets the learning rate every step"
            )
        if es.monitor.startswith("val_") and bundle.info.num_val == 0:
            raise ConfigError(
                f"train.reduce_lr_on_plateau watches {es.monitor!r} but the validation split is empty; "
                "set data.val_fraction > 0 or train.early_stopping.monitor = 'loss'"
            )
    StopRules.from_config(es, has_validation=bundle.info.num_val > 0)


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
    """model.keras: the final (or best) weights, compiled with the loss and accuracy metric.

    The file is a deployment artifact, not a training state (that is checkpoints/): it is
    compiled with a stateless SGD so it carries no optimizer slots (a third of the size for
    Adam) and no tfcnn-specific schedule, and `keras.models.load_model` works in any process
    with or without `compile=False`.
    """
    with s.strategy.scope():
        s.model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=s.cfg.train.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        s.model.optimizer.build(s.model.trainable_variables)
    path = s.rd.model
    fd, tmp = tempfile.mkstemp(prefix=".model.", suffix=".keras", dir=path.parent)
    os.close(fd)
    try:
        s.model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _diagnostics_extra(cfg: PipelineConfig) -> dict:
    es = cfg.train.early_stopping
    return {
        "monitor": es.monitor if es.enabled else None,
        "restore_best": bool(es.enabled and es.restore_best),
        "target_loss": es.target_loss,
        "target_patience": es.target_patience if es.target_loss is not None else None,
    }
