"""The ``tape`` engine: a custom tf.GradientTape loop, compiled, distributed and resumable.

One core, two callers: :class:`TapeLoop` runs a :class:`TapeSpec`, which says everything the
loop needs without a pipeline config. The pipeline's tape engine (:func:`run`, from a
:class:`~tfcnn.train.session.Session`) and the public :func:`tfcnn.train.api.train_model` (any
Keras model, any ``tf.data`` dataset) each build a spec and hand it to the same loop.

It does what the course's loop does (the task's per-example loss, cross-entropy for
classification, + the L2 terms of ``model.losses``, the target-loss stopping rule) but:

* several train steps run inside ONE ``tf.function`` call (``steps_per_execution``), so
  Python runs once per chunk rather than once per batch, and metrics stay on the device;
* under a distribution strategy the per-example loss is averaged over the GLOBAL batch
  (``tf.nn.compute_average_loss``) and the L2 term is divided by the replica count
  (``tf.nn.scale_regularization_loss``), so the summed gradients equal single-device ones;
* gradients are summed across replicas BEFORE clipping and before the per-layer norms are
  taken (Keras' ``clipnorm`` clips each replica's partial gradient);
* everything that determines the next epoch (weights, optimizer slots and step, dropout seeds,
  best weights, stopping counters, history) is one ``tf.train.Checkpoint`` per epoch, so
  re-running with the same checkpoint directory continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfcnn.errors import TfcnnError
from tfcnn.train import guard
from tfcnn.train.class_weights import example_weights
from tfcnn.train.finetune import Finetuner
from tfcnn.train.optim import build_optimizer, build_schedule, current_lr
from tfcnn.train.records import RunRecord, check_fingerprint
from tfcnn.train.session import Session
from tfcnn.train.stopping import PlateauRule, StopRules
from tfcnn.util import keras_verbose, log

STATE_KEY = "state/.ATTRIBUTES/VARIABLE_VALUE"

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def kernels(model: keras.Model) -> list:
    """The trainable kernels of a model (Dense/Conv ``kernel``, ``depthwise_kernel``, ...), the
    weights an L2 penalty applies to (Keras counts regularizers of trainable weights only)."""
    return [v for v in model.trainable_variables if v.name.endswith("kernel")]


def l2_penalty(variables: Sequence, lam: float) -> tf.Tensor:
    """``lam * sum(w**2)`` over ``variables``: what ``keras.regularizers.L2(lam)`` adds per kernel."""
    if not variables or not lam:
        return tf.constant(0.0)
    return tf.cast(lam, tf.float32) * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables])


@dataclass
class TapeSpec:
    """What one tape-engine run needs: the model, the data, the loss, the optimizer and the rules.

    ``train`` is the (finite, batched) training dataset of ``(inputs, labels)``; the loop iterates
    ``train.repeat()`` through one iterator, ``steps_per_epoch`` batches an epoch. ``checkpoint_dir``
    None means no checkpoints (and no resume). ``after_epoch(record)`` runs once an epoch is
    recorded and checkpointed (the pipeline rewrites history.csv and diagnostics.json there).
    """

    model: keras.Model
    strategy: tf.distribute.Strategy
    train: tf.data.Dataset
    val: tf.data.Dataset | None
    steps_per_epoch: int
    epochs: int
    loss_fn: LossFn  # per-example loss f(labels, outputs) -> [B], outputs as float32
    make_metrics: Callable[[], list]  # fresh Keras metrics named as in the history (called twice, in scope)
    make_optimizer: Callable[[], keras.optimizers.Optimizer]  # called inside the strategy scope
    rules: StopRules
    record: RunRecord
    restore_best: bool = True
    loss_scaled: bool = False  # wrap the optimizer in a LossScaleOptimizer (mixed_float16)
    l2: float | None = None  # lam * sum(w**2) over every trainable kernel, on top of model.losses
    clipnorm: float | None = None  # per-variable, after the cross-replica sum
    gradient_norms: bool = False
    jit_compile: bool = False
    steps_per_execution: int = 1
    input_dtype: Any = tf.float32  # what the images are cast to before the model
    plateau: PlateauRule | None = None
    checkpoint_dir: Path | None = None  # where this process writes checkpoints
    resume_dir: Path | None = None  # where to resume from (default checkpoint_dir)
    checkpoint_every: int = 1
    max_checkpoints: int = 3
    callbacks: list = field(default_factory=list)
    images_per_epoch: int | None = None  # None: counted in the train step
    tensorboard_dir: Path | None = None
    has_validation_writer: bool = False
    histogram_freq: int = 0
    after_epoch: Callable[[RunRecord], None] | None = None
    # How a refused resume says to start over (check_fingerprint's advice).
    fingerprint_source: str = "the config now says"
    fingerprint_fix: str = "use a new run directory or delete its checkpoints/ to start over"
    # What a non-finite loss says to try (guard.advice_for).
    nan_advice: str = "lower the learning rate or clip the gradients (clipnorm)"
    class_weights: Sequence[float] | None = None  # train.class_weight: training loss only (tfcnn.train.class_weights)
    finetune: Finetuner | None = None  # [train.finetune]: applied at every epoch start (tfcnn.train.finetune)


class TapeLoop:
    """Owns the compiled step functions and the training state of one tape-engine run."""

    def __init__(self, spec: TapeSpec):
        self.spec = spec
        self.model = spec.model
        self.strategy = spec.strategy
        self.replicas = int(spec.strategy.num_replicas_in_sync)
        self.loss_fn = spec.loss_fn
        self.class_weights = tf.constant(spec.class_weights, tf.float32) if spec.class_weights is not None else None
        self.restore_best = spec.restore_best
        # Every variable that can train at some epoch (fine-tuning freezes only once the optimizer
        # is built on them all: a Keras 3 optimizer refuses variables it was not built with).
        tvars = self.model.trainable_variables
        # Per-layer groups for gradient norms: the variable path without its last part.
        self.groups = list(dict.fromkeys(v.path.rsplit("/", 1)[0] for v in tvars))
        self.group_index = {g: i for i, g in enumerate(self.groups)}

        with self.strategy.scope():
            inner = spec.make_optimizer()
            self.loss_scaled = spec.loss_scaled or isinstance(inner, keras.optimizers.LossScaleOptimizer)
            if spec.loss_scaled and not isinstance(inner, keras.optimizers.LossScaleOptimizer):
                self.optimizer = keras.optimizers.LossScaleOptimizer(inner)
            else:
                self.optimizer = inner
            if not self.optimizer.built:
                self.optimizer.build(tvars)
            if spec.finetune is not None:
                spec.finetune.scale_learning_rates(self.optimizer)
            self.train_loss = keras.metrics.Mean(name="loss")
            self.train_metrics = spec.make_metrics()
            self.val_loss = keras.metrics.Mean(name="val_loss")
            self.val_metrics = spec.make_metrics()
            # [per-layer norm sums..., global norm sum, step count]; identical on every replica.
            self.norm_sums = tf.Variable(
                tf.zeros([len(self.groups) + 2]),
                trainable=False,
                synchronization=tf.VariableSynchronization.ON_WRITE,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                name="gradient_norm_sums",
            )
            # Images trained on this epoch (global), when the caller cannot say how many an epoch has.
            self.seen = (
                tf.Variable(
                    tf.constant(0, tf.int64),
                    trainable=False,
                    synchronization=tf.VariableSynchronization.ON_WRITE,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                    name="images_seen",
                )
                if spec.images_per_epoch is None
                else None
            )
            self.best_weights = [
                tf.Variable(tf.zeros(w.shape, w.dtype), trainable=False, name=f"best_{i}")
                for i, w in enumerate(self.model.weights)
            ]
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.state = tf.Variable("", dtype=tf.string, trainable=False, name="state")
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            model_variables=list(self.model.variables),  # includes dropout seed-generator states
            optimizer=self.optimizer,
            best_weights=self.best_weights,
            epoch=self.epoch,
            state=self.state,
        )
        self.manager = (
            tf.train.CheckpointManager(
                self.checkpoint, str(spec.checkpoint_dir), max_to_keep=spec.max_checkpoints, checkpoint_name="epoch"
            )
            if spec.checkpoint_dir is not None
            else None
        )
        self.record: RunRecord = spec.record
        self.rules: StopRules = spec.rules
        self.plateau = spec.plateau
        self._train_chunk = self._make_train_chunk()
        self._val_pass = self._make_val_pass()

    # ------------------------------------------------------------------ compiled steps

    def _per_example_loss(self, y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        return self.loss_fn(y, logits)

    def _regularization(self) -> tf.Tensor:
        losses = self.model.losses  # keras l2(lambda) terms: lambda * sum(w**2), recomputed on access
        terms = [tf.cast(l, tf.float32) for l in losses]
        trainable_kernels = kernels(self.model) if self.spec.l2 else []  # at trace time: frozen layers have none
        if trainable_kernels:
            terms.append(l2_penalty(trainable_kernels, self.spec.l2))
        if not terms:
            return tf.constant(0.0)
        return tf.add_n(terms)

    def _replica_step(self, x: tf.Tensor, y: tf.Tensor) -> None:
        ctx = tf.distribute.get_replica_context()
        multi = self.replicas > 1
        x = tf.cast(x, self.spec.input_dtype)
        local_n = tf.shape(y)[0]
        global_n = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_n) if multi else local_n
        tvars = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(x, training=True), tf.float32)
            per_example = self._per_example_loss(y, logits)
            if self.class_weights is not None:
                per_example = per_example * example_weights(y, self.class_weights)
            reg = self._regularization()
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_n)
            loss += tf.nn.scale_regularization_loss(reg)
            target = self.optimizer.scale_loss(loss) if self.loss_scaled else loss
        grads = tape.gradient(target, tvars)
        clip = self.spec.clipnorm
        norms = self.spec.gradient_norms
        if clip or norms:
            if multi:  # the true gradient is the replicas' sum; clip and measure that
                grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            scale = tf.cast(self.optimizer.dynamic_scale, tf.float32) if self.loss_scaled else None
            true = [g / tf.cast(scale, g.dtype) for g in grads] if scale is not None else list(grads)
            if norms:
                sq = tf.stack([tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in true])
                ids = [self.group_index[v.path.rsplit("/", 1)[0]] for v in tvars]
                per_layer = tf.math.unsorted_segment_sum(sq, ids, len(self.groups))
                self.norm_sums.assign_add(
                    tf.concat([tf.sqrt(per_layer), [tf.sqrt(tf.reduce_sum(sq)), 1.0]], axis=0)
                )
            if clip:
                true = [tf.clip_by_norm(g, clip) for g in true]
            # Hand the optimizer what it expects: the loss-scaled gradient, which its own
            # cross-replica sum turns back into `true` (so divide by the replica count).
            factor = (scale if scale is not None else 1.0) / float(self.replicas)
            grads = [g * tf.cast(factor, g.dtype) for g in true] if (multi or scale is not None) else true
        self.optimizer.apply(grads, tvars)
        self.train_loss.update_state(per_example + reg)
        for m in self.train_metrics:
            m.update_state(y, logits)
        if self.seen is not None:
            self.seen.assign_add(tf.cast(global_n, tf.int64))

    def _replica_val_step(self, x: tf.Tensor, y: tf.Tensor) -> None:
        logits = tf.cast(self.model(tf.cast(x, self.spec.input_dtype), training=False), tf.float32)
        self.val_loss.update_state(self._per_example_loss(y, logits) + self._regularization())
        for m in self.val_metrics:
            m.update_state(y, logits)

    def _make_train_chunk(self):
        step = self._replica_step
        if self.spec.jit_compile:
            step = tf.function(step, jit_compile=True, reduce_retracing=True)

        @tf.function(reduce_retracing=True)
        def train_chunk(iterator, n):
            done = tf.constant(0)
            for _ in tf.range(n):
                optional = iterator.get_next_as_optional()
                if not optional.has_value():
                    break
                x, y = optional.get_value()
                self.strategy.run(step, args=(x, y))
                done += 1
            return done

        return train_chunk

    def _make_val_pass(self):
        @tf.function(reduce_retracing=True)
        def val_pass(dataset):
            for x, y in dataset:
                self.strategy.run(self._replica_val_step, args=(x, y))

        return val_pass

    # ------------------------------------------------------------------ state

    def _save_state(self) -> None:
        self.state.assign(
            json.dumps({"record": self.record.state(), "rules": self.rules.state(), "plateau": self._plateau_state()})
        )

    def _plateau_state(self) -> dict | None:
        return self.plateau.state() if self.plateau else None

    def restore(self) -> None:
        """Continue from the last checkpoint of the resume directory, if it has one."""
        spec = self.spec
        if spec.checkpoint_dir is None and spec.resume_dir is None:
            return
        checkpoints = spec.checkpoint_dir or spec.resume_dir
        path = self._resume_path(str(spec.resume_dir or checkpoints))
        if not path:
            return
        try:
            saved = json.loads(tf.train.load_variable(path, STATE_KEY).decode())
        except (tf.errors.OpError, ValueError, KeyError) as exc:
            raise TfcnnError(f"{path} is not a tfcnn tape-engine checkpoint ({exc}); delete {checkpoints}") from None
        check_fingerprint(
            saved["record"]["fingerprint"],
            self.record.fingerprint,
            checkpoints,
            source=spec.fingerprint_source,
            fix=spec.fingerprint_fix,
        )
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as exc:
            raise TfcnnError(
                f"{path} does not match this model ({str(exc).splitlines()[0]}); use a new run directory "
                f"or delete {checkpoints}"
            ) from None
        record = RunRecord.from_state(saved["record"])
        record.resumed_at.append(record.epochs_done)
        self.record = record
        self.rules.load_state(saved["rules"])
        if self.plateau and saved.get("plateau"):
            for key in ("best", "wait"):
                setattr(self.plateau, key, saved["plateau"][key])
        # tf.data draws a new shuffle order from its seed generator for every pass over the
        # training set; replay the passes already made so epoch k+1 sees the order it would have.
        for _ in range(record.epochs_done):
            iter(spec.train)
        log.info(f"train: resuming from {path} after epoch {record.epochs_done}")

    def _resume_path(self, directory: str) -> str | None:
        """The checkpoint to resume from: the latest one in ``directory``; on a multi-worker
        cluster, the latest epoch that EVERY worker has checkpointed. A worker lost just after the
        chief saved epoch N holds only N - 1, and workers resuming from different epochs would run
        different numbers of steps: their collectives fall out of step (seen as "Collective
        instance ... expected type" when the chief finished first)."""
        if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return tf.train.latest_checkpoint(directory)
        state = tf.train.get_checkpoint_state(directory)
        paths = [str(Path(directory) / Path(p).name) for p in (state.all_model_checkpoint_paths if state else [])]
        have = {int(p.rsplit("-", 1)[1]): p for p in paths}
        mine = max(have, default=0)

        def share() -> tf.Tensor:  # every replica's epoch, each at its replica id (a SUM all-reduce)
            ctx = tf.distribute.get_replica_context()
            mask = tf.one_hot(ctx.replica_id_in_sync_group, self.replicas, dtype=tf.float32)
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, mask * float(mine))

        everyone = self.strategy.experimental_local_results(tf.function(lambda: self.strategy.run(share))())[0]
        everyone = sorted({int(round(float(e))) for e in everyone.numpy()})
        agreed = min(everyone)
        if agreed == 0:
            if mine:
                log.info(f"train: another worker has no checkpoint (epochs {everyone}): every worker starts afresh")
            return None
        if agreed not in have:
            raise TfcnnError(
                f"the workers' last checkpoints are epochs {everyone}, and {directory} no longer holds epoch-{agreed} "
                f"(train.max_checkpoints keeps {self.spec.max_checkpoints}); delete every worker's checkpoints to start over"
            )
        if agreed != mine:
            log.info(f"train: resuming from epoch {agreed}, the last one every worker checkpointed (epochs {everyone})")
        return have[agreed]

    def _copy_best(self) -> None:
        for b, w in zip(self.best_weights, self.model.weights):
            b.assign(w.value if hasattr(w, "value") else w)

    def _load_best(self) -> None:
        for b, w in zip(self.best_weights, self.model.weights):
            w.assign(b)

    def _keep_finite(self, epoch: int, last_finite: tuple[int, list] | None) -> int:
        """The loss (or the weights) of ``epoch`` went non-finite: put the last finite state back
        (the best epoch's weights, else the last finite epoch's) and return its epoch, or raise."""
        best = self.rules.best_epoch
        if self.restore_best and best is not None and best <= epoch:
            self._load_best()
            kept, what = best, f"best ({self.rules.patience.monitor})"
        elif last_finite is not None:
            kept, weights = last_finite
            self.model.set_weights(weights)
            what = "last finite"
        else:
            raise guard.no_finite_state(epoch, self.spec.nan_advice)
        if not guard.all_finite(self.model.get_weights()):  # pragma: no cover - a snapshot is always finite
            raise guard.no_finite_state(epoch, self.spec.nan_advice)
        guard.log_kept(epoch, kept, what, self.spec.nan_advice)
        self.record.restored_epoch = kept
        return kept

    # ------------------------------------------------------------------ loop

    def run(self) -> RunRecord:
        spec = self.spec
        self.restore()
        # One iterator for the whole run, over the repeated training set (batches never straddle
        # epochs: repeat() comes after batch()). Making a new iterator every epoch and dropping the
        # old one stalled ~10 s at the end of about half the epochs with an augmentation map on
        # TF 2.21 (bench/epoch_stall.py); the shuffle and augmentation draws are the same either way.
        dist_train = self.strategy.experimental_distribute_dataset(spec.train.repeat())
        iterator = iter(dist_train)
        dist_val = self.strategy.experimental_distribute_dataset(spec.val) if spec.val is not None else None
        writers = self._tensorboard_writers()
        callbacks = keras.callbacks.CallbackList(
            list(spec.callbacks), model=self.model, epochs=spec.epochs, steps=spec.steps_per_epoch
        )
        self.model.stop_training = False
        callbacks.on_train_begin()
        chunk = max(int(spec.steps_per_execution), 1)
        spe = spec.steps_per_epoch
        start = self.record.epochs_done
        # The last finite epoch-end weights (a resumed run's checkpoint is one: no checkpoint is
        # written from non-finite weights); training from non-finite weights is refused.
        weights = self.model.get_weights()
        if not guard.all_finite(weights):
            raise guard.non_finite_start(start + 1, spec.nan_advice)
        last_finite: tuple[int, list] | None = (start, weights) if start else None
        if self.rules.reason is not None:
            log.info(f"train: training already stopped at epoch {self.rules.stopped_epoch} ({self.rules.reason})")
            start = spec.epochs
        verbose = keras_verbose()
        for epoch in range(start + 1, spec.epochs + 1):
            if spec.finetune is not None and spec.finetune.apply(epoch):
                self._train_chunk = self._make_train_chunk()  # the traced step holds the old trainable list
            callbacks.on_epoch_begin(epoch - 1)
            lr = current_lr(self.optimizer)
            for m in (self.train_loss, *self.train_metrics, self.val_loss, *self.val_metrics):
                m.reset_state()
            self.norm_sums.assign(tf.zeros_like(self.norm_sums))
            if self.seen is not None:
                self.seen.assign(0)
            bar = self._progbar(epoch) if verbose == 1 else None
            t0 = time.perf_counter()
            done = 0
            while done < spe:
                n = int(self._train_chunk(iterator, tf.constant(min(chunk, spe - done))))
                if n == 0:
                    break
                done += n
                if bar is not None:
                    bar.update(done, list(self._train_logs().items()), finalize=False)
            train_time = time.perf_counter() - t0
            if dist_val is not None:
                self._val_pass(dist_val)
            seconds = time.perf_counter() - t0
            logs = {**self._train_logs(), **self._val_logs(dist_val is not None)}
            self.record.train_seconds += train_time
            self.record.train_images += self._images(done)
            norms = self._epoch_norms()
            self.record.add_epoch({"epoch": epoch, **logs, "lr": lr, "seconds": seconds}, norms)
            reason = self.rules.update(epoch, logs)
            weights = self.model.get_weights()
            if reason is None and not guard.all_finite(weights):  # a finite mean over non-finite weights
                reason = self.rules.reason = "non_finite_loss"
                self.rules.stopped_epoch = epoch
                self.rules.improved = False
            non_finite = reason == "non_finite_loss"
            if non_finite:
                self._keep_finite(epoch, last_finite)
            else:
                last_finite = (epoch, weights)
            if self.rules.improved and self.restore_best:
                self._copy_best()
            self.record.best_epoch = self.rules.best_epoch
            self.record.stopped_epoch = self.rules.stopped_epoch
            self.record.stop_reason = reason
            if self.plateau is not None and reason is None:
                new_lr = self.plateau.update(logs.get(self.plateau.monitor, math.nan), lr)
                if new_lr != lr:
                    getattr(self.optimizer, "inner_optimizer", self.optimizer).learning_rate.assign(new_lr)
                    log.info(f"train: reduce_lr_on_plateau: learning rate {lr:.3g} -> {new_lr:.3g}")
            if bar is not None:
                bar.update(done, [(k, v) for k, v in logs.items() if not math.isnan(v)], finalize=True)
            elif verbose:
                log.info(self._epoch_line(epoch, done, seconds, logs, lr))
            self.epoch.assign(epoch)
            if self.manager is not None and not non_finite and (
                reason is not None or epoch == spec.epochs or epoch % spec.checkpoint_every == 0
            ):
                self._save_state()
                self.manager.save(checkpoint_number=epoch)
            if spec.after_epoch is not None:
                spec.after_epoch(self.record)
            self._write_summaries(writers, epoch, logs, lr, norms)
            callbacks.on_epoch_end(epoch - 1, {**logs, "learning_rate": lr})
            if reason is None and getattr(self.model, "stop_training", False):
                reason = "callback"
                self.record.stop_reason = reason
                self.record.stopped_epoch = epoch
                if spec.after_epoch is not None:
                    spec.after_epoch(self.record)
            if reason is not None:
                log.info(f"train: stopping after epoch {epoch}: {reason}")
                break
        callbacks.on_train_end()
        if self.record.restored_epoch is not None and self.record.stop_reason == "non_finite_loss":
            pass  # _keep_finite put the last finite state back already
        elif self.restore_best and self.rules.best_epoch is not None and self.rules.best_epoch != self.record.epochs_done:
            self._load_best()
            log.info(f"train: restored the weights of epoch {self.rules.best_epoch} (best {self.rules.patience.monitor})")
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        if getattr(inner, "use_ema", False) and self.record.epochs_done:
            # as model.fit does: the averaged weights replace the raw ones for evaluation and export
            with self.spec.strategy.scope():
                inner.finalize_variable_values(self.model.trainable_variables)
            log.info(f"train: weights replaced by their exponential moving average (momentum {inner.ema_momentum})")
        if not guard.all_finite(self.model.get_weights()):  # a callback broke them after the last epoch
            self.record.stop_reason = self.rules.reason = "non_finite_loss"
            self.record.stopped_epoch = self.rules.stopped_epoch = self.record.epochs_done
            self._keep_finite(self.record.epochs_done, last_finite)
            if spec.after_epoch is not None:
                spec.after_epoch(self.record)
        for w in writers.values():
            w.close()
        return self.record

    def _images(self, done: int) -> int:
        """Images trained on in an epoch of ``done`` steps (for throughput)."""
        per_epoch = self.spec.images_per_epoch
        if per_epoch is None:
            return int(self.seen.numpy())
        spe = self.spec.steps_per_epoch
        return per_epoch if done == spe else int(done * per_epoch / spe)

    def _epoch_norms(self) -> dict[str, float] | None:
        if not self.spec.gradient_norms:
            return None
        sums = self.norm_sums.numpy()
        steps = max(float(sums[-1]), 1.0)
        out = {name: float(sums[i] / steps) for i, name in enumerate(self.groups)}
        out["global"] = float(sums[-2] / steps)
        return out

    def _train_logs(self) -> dict[str, float]:
        return {"loss": float(self.train_loss.result()), **{m.name: float(m.result()) for m in self.train_metrics}}

    def _val_logs(self, has_val: bool) -> dict[str, float]:
        names = ["val_loss", *(f"val_{m.name}" for m in self.val_metrics)]
        if not has_val:
            return {n: math.nan for n in names}
        return dict(zip(names, [float(self.val_loss.result()), *(float(m.result()) for m in self.val_metrics)]))

    def _progbar(self, epoch: int) -> keras.utils.Progbar:
        """On a terminal: Keras' progress bar for the epoch."""
        log.info(f"train: epoch {epoch}/{self.spec.epochs}")
        return keras.utils.Progbar(
            self.spec.steps_per_epoch,
            verbose=1,
            stateful_metrics=[k for k in self.record.columns if k not in ("epoch", "lr", "seconds")],
        )

    def _epoch_line(self, epoch: int, steps: int, seconds: float, logs: dict, lr: float) -> str:
        """Off a terminal: one plain log line per epoch (no carriage returns, no ANSI codes)."""
        parts = [f"train: epoch {epoch}/{self.spec.epochs}", f"{steps} steps", f"{seconds:.1f} s"]
        parts += [f"{k} {v:.4f}" for k, v in logs.items() if not math.isnan(v)]
        parts.append(f"lr {lr:.3g}")
        return " - ".join(parts)

    # ------------------------------------------------------------------ tensorboard

    def _metric_names(self) -> list[str]:
        """What TensorBoard shows per epoch, as Keras' callback names it (epoch_loss, epoch_accuracy)."""
        return ["loss", *(m.name for m in self.train_metrics)]

    def _tensorboard_writers(self) -> dict[str, Any]:
        root = self.spec.tensorboard_dir
        if root is None:
            return {}
        writers = {"train": tf.summary.create_file_writer(str(Path(root) / "train"))}
        if self.spec.has_validation_writer:
            writers["validation"] = tf.summary.create_file_writer(str(Path(root) / "validation"))
        return writers

    def _write_summaries(self, writers: dict, epoch: int, logs: dict, lr: float, norms: dict | None) -> None:
        if not writers:
            return
        with writers["train"].as_default(step=epoch):
            for name in self._metric_names():
                tf.summary.scalar(f"epoch_{name}", logs[name])
            tf.summary.scalar("epoch_learning_rate", lr)
            for name, value in (norms or {}).items():
                tf.summary.scalar(f"gradient_norm/{name}", value)
            freq = self.spec.histogram_freq
            if freq and epoch % freq == 0:
                for w in self.model.weights:
                    tf.summary.histogram(w.path, np.asarray(w.numpy()))
        if "validation" in writers:
            with writers["validation"].as_default(step=epoch):
                for name in self._metric_names():
                    tf.summary.scalar(f"epoch_{name}", logs[f"val_{name}"])
        for w in writers.values():
            w.flush()


def spec_from_session(s: Session) -> TapeSpec:
    """The pipeline's tape engine as a :class:`TapeSpec`: every setting from ``cfg.train``."""
    tc = s.cfg.train
    es = tc.early_stopping

    def make_optimizer() -> keras.optimizers.Optimizer:
        return build_optimizer(tc, build_schedule(tc, s.steps_per_epoch), clipnorm=False)

    plateau = (
        PlateauRule(
            monitor=es.monitor,
            mode=es.mode,
            patience=tc.plateau_patience,
            min_delta=es.min_delta,
            factor=tc.plateau_factor,
            min_lr=tc.learning_rate * tc.min_lr_fraction,
        )
        if tc.reduce_lr_on_plateau
        else None
    )
    tensorboard = tc.tensorboard and s.chief
    return TapeSpec(
        model=s.model,
        strategy=s.strategy,
        # The task turns the bundle's (images, labels) into what the model learns (identity for classifiers).
        train=s.task.feed(s.bundle.train, s.cfg, training=True),
        val=s.task.feed(s.bundle.val, s.cfg, training=False) if s.has_validation else None,
        steps_per_epoch=s.steps_per_epoch,
        epochs=tc.epochs,
        # The loop feeds the dataset's labels as they are: the task's loss takes them raw (it
        # one-hot encodes for label smoothing itself, and takes mixed probability vectors as
        # they come), so its metrics are the plain-label ones, or with soft labels ones that take both.
        loss_fn=s.task.loss_fn(s.num_outputs, s.label_smoothing),
        class_weights=s.class_weights,
        make_metrics=lambda: s.task.keras_metrics(0.0, **s.label_options),  # soft: mixed train labels
        make_optimizer=make_optimizer,
        rules=s.new_rules(),
        record=s.new_record(),
        restore_best=es.enabled and es.restore_best,
        loss_scaled=s.policy == "mixed_float16",
        clipnorm=tc.clipnorm,
        gradient_norms=tc.gradient_norms,
        jit_compile=tc.jit_compile,
        steps_per_execution=tc.steps_per_execution,
        plateau=plateau,
        checkpoint_dir=s.run.path("checkpoints"),
        resume_dir=s.resume_dir,
        checkpoint_every=tc.checkpoint_every,
        max_checkpoints=tc.max_checkpoints,
        callbacks=list(s.callbacks),
        images_per_epoch=s.bundle.info.num_train,
        tensorboard_dir=s.run.path("tensorboard") if tensorboard else None,
        has_validation_writer=s.has_validation,
        histogram_freq=tc.histogram_freq,
        after_epoch=lambda record: record.write(s.run),
        fingerprint_fix="use a new --out directory or pass --overwrite",
        nan_advice=guard.advice_for(tc.learning_rate, tc.clipnorm),
        finetune=s.finetune,
    )


def run(s: Session) -> RunRecord:
    """Train with the tape engine (see the module docstring)."""
    return TapeLoop(spec_from_session(s)).run()
