"""The training stage's checks of a config, made before any data is loaded.

Registered as the "train" check of :func:`tfcnn.config.validate` (see ``tfcnn/train/__init__.py``),
so ``tfcnn run`` refuses a monitor the engines never log before minutes of data loading; the
training entry point runs the same checks again for callers that skipped ``validate``. What
can be monitored depends on the task: the loss and the task's metrics (``Task.metric_names``),
on the training and the validation split.
"""

from __future__ import annotations

from tfcnn.config import PipelineConfig
from tfcnn.errors import ConfigError
from tfcnn.tasks import get_task
from tfcnn.train.stopping import monitor_error, monitors


def check_train_config(cfg: PipelineConfig) -> None:
    """Raise ConfigError (one line naming the key and the allowed values) for a training setting
    that cannot work whatever the data: an unknown early-stopping monitor, or ReduceLROnPlateau
    combined with a learning-rate schedule."""
    tc, es = cfg.train, cfg.train.early_stopping
    allowed = monitors(get_task(cfg.task).metric_names)
    if es.monitor not in allowed:
        raise monitor_error(es.monitor, allowed)
    if tc.class_weight is not None and not get_task(cfg.task).class_weighted:
        raise ConfigError(f"train.class_weight weighs classes, which the {cfg.task!r} task does not have; remove it")
    if cfg.data.sampling == "balanced" and not get_task(cfg.task).class_weighted:
        raise ConfigError(f"data.sampling = 'balanced' draws classes evenly, which the {cfg.task!r} task does not have; use 'shuffle'")
    if tc.use_ema and es.enabled and es.restore_best:
        raise ConfigError(
            "train.use_ema averages the weights over the whole run, which restoring the best epoch's raw weights "
            "would undo; set train.early_stopping.restore_best = false (or turn train.use_ema off)"
        )
    if tc.engine == "fit" and tc.strategy == "multi_worker":
        # Measured with two worker processes: Keras 3.15's fit hands a PerReplica batch to
        # convert_to_tensor and fails in the first step (open upstream: keras-team/keras#20585).
        raise ConfigError(
            "train.strategy = 'multi_worker' needs engine = 'tape': Keras 3's model.fit cannot train under "
            "MultiWorkerMirroredStrategy (keras-team/keras#20585); 'mirrored' works with both engines"
        )
    if tc.nesterov and tc.optimizer != "sgd":
        raise ConfigError(f"train.nesterov applies to optimizer = 'sgd' only (got {tc.optimizer!r})")
    if tc.reduce_lr_on_plateau and (tc.schedule != "constant" or tc.warmup_epochs > 0):
        raise ConfigError(
            f"train.reduce_lr_on_plateau needs schedule = 'constant' without warm-up (got schedule = {tc.schedule!r}, "
            f"warmup_epochs = {tc.warmup_epochs}); a schedule already sets the learning rate every step"
        )
