"""The ``fit`` engine: ``model.fit`` with Keras callbacks around the same stopping rules.

Keras provides the loop, BackupAndRestore (resume after an interruption), ModelCheckpoint,
TensorBoard, ReduceLROnPlateau and TerminateOnNaN. tfcnn adds two callbacks: one feeding the
shared :class:`StopRules` (patience and the course's target-loss rule, with best weights), and
one writing the history and Diagnostics record through the shared :class:`RunRecord`. Their
state (the run's ``fit_state`` file) is stored next to the backup so a resumed fit keeps its
history and stopping counters.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfcnn.train import guard
from tfcnn.train.class_weights import example_weights
from tfcnn.train.finetune import Finetuner
from tfcnn.train.optim import build_optimizer, build_schedule, current_lr
from tfcnn.train.records import RunRecord, check_fingerprint, finite
from tfcnn.train.session import Session
from tfcnn.train.stopping import StopRules
from tfcnn.util import atomic_path, keras_verbose, log, read_json, write_json


class FinetuneCallback(keras.callbacks.Callback):
    """Applies ``[train.finetune]``'s freezing at every epoch start (first in the list, before
    any callback sees the epoch), and has Keras retrace its train step when the trainable set
    changed: ``fit`` calls ``model.train_function`` afresh for every step, so a rebuilt one is used."""

    def __init__(self, finetune: Finetuner):
        super().__init__()
        self.finetune = finetune

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.finetune.apply(epoch + 1):
            self.model.make_train_function(force=True)


class EpochAlignedSteps:
    """The train function of a fit whose ``steps_per_execution`` does not divide the epoch.

    Keras 3 runs ``steps_per_execution`` steps per call on one iterator over the repeated
    training set: with 422 steps per epoch and 16 per call its 27th call would take 10 batches of
    the next epoch. So the last call of every epoch runs the remainder (a second train function
    traced with ``steps_per_execution = 422 % 16 = 6``) and every epoch is exactly its own
    batches, still from one iterator (a new iterator per epoch refills the shuffle buffer: the
    end-of-epoch stall bench/epoch_stall.py measures). Calls are counted from the start of the
    fit, which always starts at an epoch boundary (BackupAndRestore resumes whole epochs).
    """

    def __init__(self, model: keras.Model, block, remainder, steps: tuple[int, int], calls_per_epoch: int, counter: list[int]):
        self.model, self.block, self.remainder, self.steps = model, block, remainder, steps
        self.calls_per_epoch, self.counter = calls_per_epoch, counter

    def __call__(self, iterator):
        call = self.counter[0]
        self.counter[0] += 1
        if call % self.calls_per_epoch != self.calls_per_epoch - 1:
            return self.block(iterator)
        # Keras' multi-step loop reads model.steps_per_execution when it is traced, i.e. on the
        # first call: that call (and only the trace) must see the remainder.
        per_call, remainder = self.steps
        self.model.steps_per_execution = remainder
        try:
            return self.remainder(iterator)
        finally:
            self.model.steps_per_execution = per_call


def align_steps_to_epochs(model: keras.Model, steps_per_epoch: int) -> int:
    """Make ``model``'s (re)built train functions stop each epoch on its last step; the remainder
    steps of an epoch's last call (0 when ``steps_per_execution`` tiles the epoch: nothing to do).

    ``make_train_function`` is wrapped on the instance, so a retrace (the fine-tuning callback
    forces one when the trainable set changes) builds the aligned pair again."""
    per_call = int(model.steps_per_execution)
    remainder = steps_per_epoch % per_call
    if per_call <= 1 or remainder == 0:
        return 0
    build = model.make_train_function  # Keras' own, bound to the model
    counter = [0]  # shared by every rebuilt pair: a retrace at an epoch start keeps the count

    def make_train_function(force: bool = False):
        if model.train_function is not None and not force:
            return model.train_function
        build(force=True)
        tail = model.train_function  # a second function: its own trace, for `remainder` steps
        build(force=True)
        model.train_function = EpochAlignedSteps(model, model.train_function, tail, (per_call, remainder),
                                                 -(-steps_per_epoch // per_call), counter)
        return model.train_function

    model.make_train_function = make_train_function
    model.train_function = None
    return remainder


class RulesCallback(keras.callbacks.Callback):
    """Early stopping through :class:`StopRules`, keeping the best epoch's weights.

    It also keeps non-finite weights out of the run: when an epoch's loss (or weights) went
    non-finite it puts the last finite state back at once, before ModelCheckpoint and
    BackupAndRestore (later in the callback list) save anything, or raises TrainingError when
    there is none (then nothing of the epoch is saved).
    """

    def __init__(self, rules: StopRules, best_path: Path, restore_best: bool, advice: str = ""):
        super().__init__()
        self.rules = rules
        self.best_path = best_path
        self.restore_best = restore_best
        self.advice = advice
        self.best_weights: list[np.ndarray] | None = None
        self.last_epoch = 0
        self.last_finite: tuple[int, list[np.ndarray]] | None = None
        self.kept_epoch: int | None = None
        self._started = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self._started:
            return
        # After every on_train_begin, so BackupAndRestore has put a resumed run's weights back.
        self._started = True
        weights = self.model.get_weights()
        if not guard.all_finite(weights):
            raise guard.non_finite_start(epoch + 1, self.advice)
        if epoch > 0:
            self.last_finite = (epoch, weights)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.last_epoch = epoch + 1
        reason = self.rules.update(epoch + 1, dict(logs or {}))
        weights = self.model.get_weights()
        if reason is None and not guard.all_finite(weights):  # a finite mean over non-finite weights
            reason = self.rules.reason = "non_finite_loss"
            self.rules.stopped_epoch = epoch + 1
            self.rules.improved = False
        if reason == "non_finite_loss":
            self._keep_finite(epoch + 1)
        else:
            self.last_finite = (epoch + 1, weights)
            if self.rules.improved and self.restore_best:
                self.best_weights = weights
                _save_npz(self.best_path, self.best_weights)
        if reason is not None:
            self.model.stop_training = True

    def _load_best_weights(self) -> list[np.ndarray] | None:
        if self.best_weights is None and self.best_path.is_file():  # best epoch was before a resume
            with np.load(self.best_path) as npz:
                self.best_weights = [npz[f"w{i}"] for i in range(len(npz.files))]
        return self.best_weights

    def _keep_finite(self, epoch: int) -> None:
        best = self.rules.best_epoch
        best_weights = self._load_best_weights() if self.restore_best and best is not None else None
        if best_weights is not None and guard.all_finite(best_weights):
            self.model.set_weights(best_weights)
            kept, what = best, f"best ({self.rules.patience.monitor})"
        elif self.last_finite is not None:
            kept, weights = self.last_finite
            self.model.set_weights(weights)
            what = "last finite"
        else:
            raise guard.no_finite_state(epoch, self.advice)
        guard.log_kept(epoch, kept, what, self.advice)
        self.kept_epoch = kept

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.kept_epoch is not None:
            return  # _keep_finite put the last finite state back already
        best = self.rules.best_epoch
        if self.restore_best and best is not None and best != self.last_epoch:
            best_weights = self._load_best_weights()
            if best_weights is not None:
                self.model.set_weights(best_weights)
        if not guard.all_finite(self.model.get_weights()):  # broken after the last epoch's check
            self.rules.reason, self.rules.stopped_epoch = "non_finite_loss", self.last_epoch
            self._keep_finite(self.last_epoch)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, with a backup that a kill cannot leave half-written.

    Keras overwrites ``latest.weights.h5`` in place and then ``training_metadata.json``: a kill
    inside the weights write leaves a truncated file that the next run cannot load, and a kill
    between the two writes pairs epoch N's weights with epoch N-1's epoch number. Here each
    epoch's weights go to their own file (``epoch-N.weights.h5``, written to a temp path and
    renamed), then the metadata, which names that file, replaces the old one in one rename: that
    rename is the commit. Until it happens the previous epoch's files are what a rerun loads;
    after it, older weight files are removed.
    """

    def _load_model(self) -> None:
        meta = Path(self._training_metadata_path)
        for partial in meta.parent.glob(".epoch-*"):  # a write a kill interrupted: never committed
            partial.unlink(missing_ok=True)
        if meta.is_file():
            try:
                name = json.loads(meta.read_text()).get("weights")
            except json.JSONDecodeError:
                name = None  # cannot happen through the rename commit; Keras' own loader then reports it
            if name:
                self._weights_path = str(meta.parent / name)
        super()._load_model()

    def _save_model(self) -> None:
        backup = Path(self.backup_dir)
        backup.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{self._current_epoch}.weights.h5"
        with atomic_path(backup / name, suffix=".weights.h5") as tmp:
            self.model.save_weights(str(tmp), overwrite=True)
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name}
        write_json(Path(self._training_metadata_path), metadata)  # the commit (temp file, then rename)
        self._weights_path = str(backup / name)
        for old in backup.glob("epoch-*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)


def seed_states(model: keras.Model) -> list:
    """The model's random-number state (its layers' SeedGenerators: dropout, in-model augmentation).

    Keras' BackupAndRestore saves ``model.weights``, which leave these out, so a resumed fit drew
    its dropout masks afresh from the first epoch's state (a killed-and-resumed run ended 0.25 away
    in max weight difference from one never interrupted); RecordCallback keeps them in the
    ``fit_state`` snapshot of every epoch and puts them back on resume, as the tape engine's
    checkpoint (which holds every variable) does."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


class RecordCallback(keras.callbacks.Callback):
    """The history and Diagnostics record per epoch, training-phase timing, and resumable state."""

    def __init__(self, s: Session, record: RunRecord, rules: StopRules, state_path: Path):
        super().__init__()
        self.s = s
        self.record = record
        self.rules = rules
        self.state_path = state_path
        self.snapshots: dict[str, dict] = {}
        self._t0 = self._train_end = 0.0
        self._lr = math.nan
        self._first = True

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self._first:
            self._first = False
            if epoch > 0:
                self._resume(epoch)
        lr = current_lr(self.model.optimizer)
        if self.s.cfg.train.reduce_lr_on_plateau and self.record.rows and lr != self.record.rows[-1]["lr"]:
            # Keras' ReduceLROnPlateau runs silent (it would print); say it the way the tape engine does.
            log.info(f"train: reduce_lr_on_plateau: learning rate {self.record.rows[-1]['lr']:.3g} -> {lr:.3g}")
        self._lr = lr
        self._t0 = time.perf_counter()
        self._train_end = 0.0

    def _resume(self, epoch: int) -> None:
        """BackupAndRestore put the model back after `epoch` epochs; put our state there too."""
        if not self.state_path.is_file():
            return
        saved = read_json(self.state_path)
        snap = saved.get("snapshots", {}).get(str(epoch))
        if snap is None:
            return
        record = RunRecord.from_state(snap["record"])
        for key in ("rows", "gradient_norms", "best_epoch", "stopped_epoch", "stop_reason"):
            setattr(self.record, key, getattr(record, key))
        self.record.resumed_at = record.resumed_at + [epoch]
        self.rules.load_state(snap["rules"])
        seeds = seed_states(self.model)
        if len(snap.get("seeds", [])) == len(seeds):  # the dropout draws go on where they stopped
            for var, value in zip(seeds, snap["seeds"]):
                var.assign(np.asarray(value, dtype=var.dtype))
        self.snapshots = {k: v for k, v in saved["snapshots"].items() if int(k) <= epoch}

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self._t0 and not self._train_end:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        now = time.perf_counter()
        self.record.train_seconds += (self._train_end or now) - self._t0
        self.record.train_images += self.s.bundle.info.num_train
        row = {k: logs.get(k) for k in self.record.columns}
        row.update(epoch=epoch + 1, lr=self._lr, seconds=now - self._t0)
        self.record.add_epoch(row)
        self.record.best_epoch = self.rules.best_epoch
        self.record.stopped_epoch = self.rules.stopped_epoch
        self.record.stop_reason = self.rules.reason
        self.snapshots[str(epoch + 1)] = {"record": self.record.state(), "rules": self.rules.state(),
                                          "seeds": [np.asarray(v).tolist() for v in seed_states(self.model)]}
        write_json(self.state_path, finite({"fingerprint": self.record.fingerprint, "snapshots": self.snapshots}))
        self.record.write(self.s.run)


def run(s: Session) -> RunRecord:
    """Train with model.fit (see the module docstring)."""
    tc = s.cfg.train
    es = tc.early_stopping
    run = s.run
    checkpoints = run.dir("checkpoints")
    backup_dir = run.path("fit_backup")
    state_path = run.path("fit_state")
    record = s.new_record()
    rules = s.new_rules()
    resume_epoch = _backup_epoch(backup_dir)
    if resume_epoch and state_path.is_file():
        check_fingerprint(read_json(state_path).get("fingerprint", {}), record.fingerprint, checkpoints)

    steps_per_execution = tc.steps_per_execution
    if s.replicas > 1:
        # Keras 3.15's multi-step loop fails under MirroredStrategy ("You must feed a value for
        # placeholder tensor"), and its clipnorm clips each replica's partial gradient.
        steps_per_execution = 1
        if tc.clipnorm:
            log.info("train: note: with the fit engine on several replicas Keras clips each replica's gradient; the tape engine clips the sum")
    k, smoothing = s.num_outputs, s.label_smoothing
    with s.strategy.scope():
        optimizer = build_optimizer(tc, build_schedule(tc, s.steps_per_epoch), clipnorm=True)
        s.model.compile(
            optimizer=optimizer,
            loss=s.task.keras_loss(smoothing, **s.label_options),
            metrics=s.task.keras_metrics(smoothing, **s.label_options),
            steps_per_execution=steps_per_execution,
            jit_compile=tc.jit_compile,
        )
        if s.finetune is not None:
            # Built on every variable that can ever train, before the first freeze (a Keras 3
            # optimizer refuses variables it was not built with); then the per-group rates.
            s.model.optimizer.build(s.model.trainable_variables)
            s.finetune.scale_learning_rates(s.model.optimizer)

    def prepare(ds: tf.data.Dataset) -> tf.data.Dataset:
        # Keras casts the uint8 images to the model's float32 input itself; the task shapes the
        # labels for its loss (classification: one-hot with label smoothing or mixed train labels).
        opts = s.label_options
        return ds.map(lambda x, y: (x, s.task.prepare_labels(y, k, smoothing, **opts)), num_parallel_calls=tf.data.AUTOTUNE)

    # Replay the shuffle passes the interrupted run made (see tape.TapeTrainer.restore).
    for _ in range(resume_epoch):
        iter(s.bundle.train)
    # Repeated, with steps_per_epoch, Keras keeps one iterator for the run instead of one per epoch
    # (see tape.TapeTrainer.run: per-epoch iterators stalled at epoch ends); each epoch's last
    # call runs only the steps left in it when steps_per_execution does not tile the epoch.
    remainder = align_steps_to_epochs(s.model, s.steps_per_epoch)
    if remainder:
        log.info(f"train: {s.steps_per_epoch} steps per epoch in calls of {steps_per_execution}, the last of each epoch {remainder}")
    # The task turns the bundle's (images, labels) into what the model learns (identity for classifiers).
    train_ds = prepare(s.task.feed(s.bundle.train, s.cfg, training=True))
    weights = s.class_weights
    if weights is not None:  # Keras' sample_weight, from the prepared labels (tfcnn.train.class_weights)
        w = tf.constant(weights, tf.float32)
        train_ds = train_ds.map(lambda x, y: (x, y, example_weights(y, w)), num_parallel_calls=tf.data.AUTOTUNE)
    train_ds = train_ds.repeat()
    val_ds = prepare(s.task.feed(s.bundle.val, s.cfg, training=False)) if s.has_validation else None

    rules_cb = RulesCallback(
        rules, run.path("best_weights"), es.enabled and es.restore_best, guard.advice_for(tc.learning_rate, tc.clipnorm)
    )
    record_cb = RecordCallback(s, record, rules, state_path)
    callbacks: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN(), rules_cb, record_cb]
    if s.finetune is not None:
        callbacks.insert(0, FinetuneCallback(s.finetune))
    if tc.reduce_lr_on_plateau:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=es.monitor,
                mode=es.mode,
                factor=tc.plateau_factor,
                patience=tc.plateau_patience,
                min_delta=es.min_delta,
                min_lr=tc.learning_rate * tc.min_lr_fraction,
                verbose=0,  # RecordCallback logs the change
            )
        )
    callbacks.append(keras.callbacks.ModelCheckpoint(str(run.path("last_weights")), save_weights_only=True))
    if tc.tensorboard and s.chief:
        callbacks.append(
            keras.callbacks.TensorBoard(log_dir=str(run.path("tensorboard")), histogram_freq=tc.histogram_freq, write_graph=False)
        )
    callbacks.append(AtomicBackupAndRestore(str(backup_dir)))
    callbacks.extend(s.callbacks)
    if resume_epoch:
        log.info(f"train: resuming the interrupted fit after epoch {resume_epoch}")
    try:
        s.model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=tc.epochs,
            steps_per_epoch=s.steps_per_epoch,
            shuffle=False,  # the bundle's pipeline shuffles (seeded, every epoch)
            callbacks=callbacks,
            verbose=keras_verbose(),
        )
    finally:
        if remainder:  # the model leaves with Keras' own train function builder
            del s.model.make_train_function
            s.model.train_function = None
    if rules.reason is None and record.rows and not math.isfinite(record.rows[-1]["loss"]):
        record.stop_reason = "non_finite_loss"  # TerminateOnNaN stopped inside the epoch
    if rules_cb.kept_epoch is not None:
        record.restored_epoch = rules_cb.kept_epoch
        record.stop_reason = "non_finite_loss"
        record.stopped_epoch = rules.stopped_epoch
    return record


def _backup_epoch(backup_dir: Path) -> int:
    """The epoch an interrupted fit's BackupAndRestore saved (Keras' own metadata file), or 0."""
    meta = backup_dir / "training_metadata.json"
    if not meta.is_file():
        return 0
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (ValueError, KeyError, json.JSONDecodeError):
        return 0


def _save_npz(path: Path, arrays: list[np.ndarray]) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **{f"w{i}": a for i, a in enumerate(arrays)})
