"""The ``tape`` engine: a custom tf.GradientTape loop, compiled, distributed and resumable.

It does what the course's loop does (the task's per-example loss, cross-entropy for
classification, + the L2 terms of ``model.losses``, the target-loss stopping rule) but:

* several train steps run inside ONE ``tf.function`` call (``train.steps_per_execution``), so
  Python runs once per chunk rather than once per batch, and metrics stay on the device;
* under a distribution strategy the per-example loss is averaged over the GLOBAL batch
  (``tf.nn.compute_average_loss``) and the L2 term is divided by the replica count
  (``tf.nn.scale_regularization_loss``), so the summed gradients equal single-device ones;
* gradients are summed across replicas BEFORE clipping and before the per-layer norms are
  taken (Keras' ``clipnorm`` clips each replica's partial gradient);
* everything that determines the next epoch (weights, optimizer slots and step, dropout seeds,
  best weights, stopping counters, history) is one ``tf.train.Checkpoint`` per epoch, so
  re-running on the same run directory continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcnn.errors import TfcnnError
from tfcnn.train.optim import build_optimizer, build_schedule, current_lr
from tfcnn.train.records import RunRecord, check_fingerprint
from tfcnn.train.session import Session
from tfcnn.train.stopping import PlateauRule, StopRules
from tfcnn.util import keras_verbose, log

STATE_KEY = "state/.ATTRIBUTES/VARIABLE_VALUE"


class TapeTrainer:
    """Owns the compiled step functions and the training state of one tape-engine run."""

    def __init__(self, s: Session):
        self.s = s
        tc = s.cfg.train
        self.tc = tc
        self.model = s.model
        self.strategy = s.strategy
        self.replicas = s.replicas
        # The loop feeds the dataset's labels as they are: the task's loss takes them raw (it
        # one-hot encodes for label smoothing itself), so its metrics are the plain-label ones.
        self.loss_fn = s.task.loss_fn(s.num_outputs, s.label_smoothing)
        self.restore_best = tc.early_stopping.enabled and tc.early_stopping.restore_best
        tvars = self.model.trainable_variables
        # Per-layer groups for gradient norms: the variable path without its last part.
        self.groups = list(dict.fromkeys(v.path.rsplit("/", 1)[0] for v in tvars))
        self.group_ids = [self.groups.index(v.path.rsplit("/", 1)[0]) for v in tvars]

        schedule = build_schedule(tc, s.steps_per_epoch)
        with self.strategy.scope():
            inner = build_optimizer(tc, schedule, clipnorm=False)
            self.loss_scaled = s.policy == "mixed_float16"
            self.optimizer = keras.optimizers.LossScaleOptimizer(inner) if self.loss_scaled else inner
            self.optimizer.build(tvars)
            self.train_loss = keras.metrics.Mean(name="loss")
            self.train_metrics = s.task.keras_metrics(0.0)
            self.val_loss = keras.metrics.Mean(name="val_loss")
            self.val_metrics = s.task.keras_metrics(0.0)
            # [per-layer norm sums..., global norm sum, step count]; identical on every replica.
            self.norm_sums = tf.Variable(
                tf.zeros([len(self.groups) + 2]),
                trainable=False,
                synchronization=tf.VariableSynchronization.ON_WRITE,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                name="gradient_norm_sums",
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
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(s.run.path("checkpoints")), max_to_keep=tc.max_checkpoints, checkpoint_name="epoch"
        )
        self.record: RunRecord = s.new_record()
        self.rules: StopRules = s.new_rules()
        es = tc.early_stopping
        self.plateau = (
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
        self._train_chunk = self._make_train_chunk()
        self._val_pass = self._make_val_pass()

    # ------------------------------------------------------------------ compiled steps

    def _per_example_loss(self, y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        return self.loss_fn(y, logits)

    def _regularization(self) -> tf.Tensor:
        losses = self.model.losses  # keras l2(lambda) terms: lambda * sum(w**2), recomputed on access
        if not losses:
            return tf.constant(0.0)
        return tf.add_n([tf.cast(l, tf.float32) for l in losses])

    def _replica_step(self, x: tf.Tensor, y: tf.Tensor) -> None:
        ctx = tf.distribute.get_replica_context()
        multi = self.replicas > 1
        x = tf.cast(x, tf.float32)
        local_n = tf.shape(y)[0]
        global_n = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_n) if multi else local_n
        tvars = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(x, training=True), tf.float32)
            per_example = self._per_example_loss(y, logits)
            reg = self._regularization()
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_n)
            loss += tf.nn.scale_regularization_loss(reg)
            target = self.optimizer.scale_loss(loss) if self.loss_scaled else loss
        grads = tape.gradient(target, tvars)
        clip = self.tc.clipnorm
        norms = self.tc.gradient_norms
        if clip or norms:
            if multi:  # the true gradient is the replicas' sum; clip and measure that
                grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            scale = tf.cast(self.optimizer.dynamic_scale, tf.float32) if self.loss_scaled else None
            true = [g / tf.cast(scale, g.dtype) for g in grads] if scale is not None else list(grads)
            if norms:
                sq = tf.stack([tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in true])
                per_layer = tf.math.unsorted_segment_sum(sq, self.group_ids, len(self.groups))
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

    def _replica_val_step(self, x: tf.Tensor, y: tf.Tensor) -> None:
        logits = tf.cast(self.model(tf.cast(x, tf.float32), training=False), tf.float32)
        self.val_loss.update_state(self._per_example_loss(y, logits) + self._regularization())
        for m in self.val_metrics:
            m.update_state(y, logits)

    def _make_train_chunk(self):
        step = self._replica_step
        if self.tc.jit_compile:
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
        """Continue from the run directory's last checkpoint, if it has one."""
        checkpoints = self.s.run.path("checkpoints")
        path = tf.train.latest_checkpoint(str(self.s.resume_dir or checkpoints))
        if not path:
            return
        try:
            saved = json.loads(tf.train.load_variable(path, STATE_KEY).decode())
        except (tf.errors.OpError, ValueError, KeyError) as exc:
            raise TfcnnError(f"{path} is not a tfcnn tape-engine checkpoint ({exc}); delete {checkpoints}") from None
        check_fingerprint(saved["record"]["fingerprint"], self.record.fingerprint, checkpoints)
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
            iter(self.s.bundle.train)
        log.info(f"train: resuming from {path} after epoch {record.epochs_done}")

    def _copy_best(self) -> None:
        for b, w in zip(self.best_weights, self.model.weights):
            b.assign(w.value if hasattr(w, "value") else w)

    def _load_best(self) -> None:
        for b, w in zip(self.best_weights, self.model.weights):
            w.assign(b)

    # ------------------------------------------------------------------ loop

    def run(self) -> RunRecord:
        s, tc = self.s, self.tc
        self.restore()
        # One iterator for the whole run, over the repeated training set (batches never straddle
        # epochs: repeat() comes after batch()). Making a new iterator every epoch and dropping the
        # old one stalled ~10 s at the end of about half the epochs with an augmentation map on
        # TF 2.21 (bench/epoch_stall.py); the shuffle and augmentation draws are the same either way.
        dist_train = self.strategy.experimental_distribute_dataset(s.bundle.train.repeat())
        iterator = iter(dist_train)
        dist_val = self.strategy.experimental_distribute_dataset(s.bundle.val) if s.has_validation else None
        writers = self._tensorboard_writers()
        callbacks = keras.callbacks.CallbackList(s.callbacks, model=self.model, epochs=tc.epochs, steps=s.steps_per_epoch)
        callbacks.on_train_begin()
        chunk = max(int(tc.steps_per_execution), 1)
        spe = s.steps_per_epoch
        start = self.record.epochs_done
        if self.rules.reason is not None:
            log.info(f"train: training already stopped at epoch {self.rules.stopped_epoch} ({self.rules.reason})")
            start = tc.epochs
        for epoch in range(start + 1, tc.epochs + 1):
            callbacks.on_epoch_begin(epoch - 1)
            lr = current_lr(self.optimizer)
            for m in (self.train_loss, *self.train_metrics, self.val_loss, *self.val_metrics):
                m.reset_state()
            self.norm_sums.assign(tf.zeros_like(self.norm_sums))
            bar = self._progbar(epoch)
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
            self.record.train_images += s.bundle.info.num_train if done == spe else int(done * s.bundle.info.num_train / spe)
            norms = self._epoch_norms()
            self.record.add_epoch({"epoch": epoch, **logs, "lr": lr, "seconds": seconds}, norms)
            reason = self.rules.update(epoch, logs)
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
            self.epoch.assign(epoch)
            if reason is not None or epoch == tc.epochs or epoch % tc.checkpoint_every == 0:
                self._save_state()
                self.manager.save(checkpoint_number=epoch)
            self.record.write(s.run)
            self._write_summaries(writers, epoch, logs, lr, norms)
            callbacks.on_epoch_end(epoch - 1, {**logs, "learning_rate": lr})
            if reason is not None:
                log.info(f"train: stopping after epoch {epoch}: {reason}")
                break
        callbacks.on_train_end()
        if self.restore_best and self.rules.best_epoch is not None and self.rules.best_epoch != self.record.epochs_done:
            self._load_best()
            log.info(f"train: restored the weights of epoch {self.rules.best_epoch} (best {self.rules.patience.monitor})")
        for w in writers.values():
            w.close()
        return self.record

    def _epoch_norms(self) -> dict[str, float] | None:
        if not self.tc.gradient_norms:
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

    def _progbar(self, epoch: int) -> keras.utils.Progbar | None:
        verbose = keras_verbose()
        if not verbose:
            return None
        log.info(f"train: epoch {epoch}/{self.tc.epochs}")
        return keras.utils.Progbar(
            self.s.steps_per_epoch,
            verbose=verbose,
            stateful_metrics=[k for k in self.record.columns if k not in ("epoch", "lr", "seconds")],
        )

    # ------------------------------------------------------------------ tensorboard

    def _metric_names(self) -> list[str]:
        """What TensorBoard shows per epoch, as Keras' callback names it (epoch_loss, epoch_accuracy)."""
        return ["loss", *(m.name for m in self.train_metrics)]

    def _tensorboard_writers(self) -> dict[str, Any]:
        if not self.tc.tensorboard or not self.s.chief:
            return {}
        root = self.s.run.path("tensorboard")
        writers = {"train": tf.summary.create_file_writer(str(root / "train"))}
        if self.s.has_validation:
            writers["validation"] = tf.summary.create_file_writer(str(root / "validation"))
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
            freq = self.tc.histogram_freq
            if freq and epoch % freq == 0:
                for w in self.model.weights:
                    tf.summary.histogram(w.path, np.asarray(w.numpy()))
        if "validation" in writers:
            with writers["validation"].as_default(step=epoch):
                for name in self._metric_names():
                    tf.summary.scalar(f"epoch_{name}", logs[f"val_{name}"])
        for w in writers.values():
            w.flush()


def run(s: Session) -> RunRecord:
    """Train with the tape engine (see the module docstring)."""
    return TapeTrainer(s).run()
