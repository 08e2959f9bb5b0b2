"""Tasks: what differs between kinds of model (classification, reconstruction, detection and
segmentation), so that train, evaluate, export and verify stay task-agnostic.

A task is registered once (:data:`TASKS`); adding one means adding one module here.
"""

from tfcnn.tasks.base import TASKS, Task, get_task
from tfcnn.tasks import classification as _classification  # noqa: F401  (registers "classification")
from tfcnn.tasks import reconstruction as _reconstruction  # noqa: F401  (registers "reconstruction")
from tfcnn.tasks import detection as _detection  # noqa: F401  (registers "detection")
from tfcnn.tasks import segmentation as _segmentation  # noqa: F401  (registers "segmentation")

__all__ = ["TASKS", "Task", "get_task"]


def _check(cfg) -> None:
    """`task` names a registered task (no I/O), and one that learns from mixed labels when
    data.augment mixes them (mixup / CutMix)."""
    task = get_task(cfg.task)
    task.check_config(cfg)
    aug = cfg.data.augment
    if aug.mixes_labels and not task.soft_labels:
        key = "mixup" if aug.mixup and aug.mixup_prob else "cutmix"
        from tfcnn.errors import ConfigError

        raise ConfigError(
            f"data.augment.{key} mixes labels, which the {cfg.task!r} task does not learn from; "
            f"remove data.augment.{key} (or set it to 0)"
        )


from tfcnn import config as _config  # noqa: E402

_config.register_check("task", _check)
