"""Tasks: what differs between kinds of model (classification now; reconstruction, detection and
segmentation later), so that train, evaluate, export and verify stay task-agnostic.

A task is registered once (:data:`TASKS`); adding one means adding one module here.
"""

from tfcnn.tasks.base import TASKS, Task, get_task
from tfcnn.tasks import classification as _classification  # noqa: F401  (registers "classification")

__all__ = ["TASKS", "Task", "get_task"]


def _check(cfg) -> None:
    """`task` names a registered task (no I/O)."""
    get_task(cfg.task)


from tfcnn import config as _config  # noqa: E402

_config.register_check("task", _check)
