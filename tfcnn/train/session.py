"""What one call of :func:`tfcnn.train.train` hands an engine: the :class:`Session`.

It lives apart from :mod:`tfcnn.train.core` so that the engines (``fit``, ``tape``) and the entry
point that picks one import it without importing each other (tests/test_layering.py refuses
import cycles).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import keras
import tensorflow as tf

from tfcnn.config import PipelineConfig
from tfcnn.data.bundle import DataBundle
from tfcnn.run import Run
from tfcnn.tasks import Task
from tfcnn.train.finetune import Finetuner
from tfcnn.train.records import RunRecord, fingerprint, history_columns
from tfcnn.train.stopping import StopRules, monitors


@dataclass
class Session:
    """One call of ``train``: what an engine needs to run (built by :func:`tfcnn.train.core.train`)."""

    cfg: PipelineConfig
    bundle: DataBundle
    run: Run  # where this process writes (a scratch Run on non-chief workers)
    strategy: tf.distribute.Strategy
    model: keras.Model
    policy: str
    task: Task
    steps_per_epoch: int
    callbacks: list[keras.callbacks.Callback] = field(default_factory=list)
    chief: bool = True
    # Where to resume from: the run directory's checkpoints, also for non-chief workers, which
    # write their own checkpoints to a scratch run but must restore the chief's state.
    resume_dir: Path | None = None
    finetune: Finetuner | None = None  # [train.finetune]: freezing and per-group learning rates

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def has_validation(self) -> bool:
        return self.bundle.info.num_val > 0

    @property
    def num_outputs(self) -> int:
        return self.bundle.info.num_classes

    @property
    def label_smoothing(self) -> float:
        return float(self.cfg.train.label_smoothing)

    @property
    def soft_labels(self) -> bool:
        """The train split yields probability vectors (mixup / CutMix) and the task learns from
        them: the engines then ask the task for its ``soft=True`` loss and metrics."""
        labels = self.bundle.train.element_spec[1]
        return bool(self.task.soft_labels and labels.dtype.is_floating and labels.shape.rank == 2)

    @property
    def class_weights(self) -> list[float] | None:
        """``train.class_weight`` as one weight per class (None: unweighted), from the training labels."""
        from tfcnn.train.class_weights import class_weights

        return class_weights(self.cfg.train.class_weight, self.bundle.info.class_names, self.bundle.arrays["train"][1])

    @property
    def label_options(self) -> dict:
        """Keyword arguments for the task's loss / metrics / prepare_labels: ``soft=True`` only
        when soft labels are on, so a task without them needs no ``soft`` parameter."""
        return {"soft": True} if self.soft_labels else {}

    def new_record(self) -> RunRecord:
        return RunRecord(
            engine=self.cfg.train.engine,
            strategy=self.cfg.train.strategy,
            replicas=self.replicas,
            policy=self.policy,
            fingerprint=fingerprint(self.cfg),
            columns=list(history_columns(self.task.metric_names)),
        )

    def new_rules(self) -> StopRules:
        return StopRules.from_config(
            self.cfg.train.early_stopping,
            has_validation=self.has_validation,
            monitors=monitors(self.task.metric_names),
        )
