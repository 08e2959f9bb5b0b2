"""What every task's evaluation shares: the registry of evaluations and the run-file helpers.

Each task registers one evaluation (``EVALUATIONS[task.name]``), a function
``(model, bundle, run, task, **options) -> headline scores`` that writes the task's Evaluation
record and arrays into the run. The evaluate stage (:mod:`tfcnn.evaluate.stage`) only looks it
up, so a new task adds one module here beside its module in :mod:`tfcnn.tasks`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfcnn.errors import ConfigError
from tfcnn.run import Run
from tfcnn.util import Registry, atomic_path

EVALUATIONS: Registry = Registry("task evaluation", "task")


def finite_or_none(v) -> float | None:
    """A JSON-safe score: None for a missing or non-finite one (e.g. no small objects at all)."""
    import math

    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def rel(run: Run, kind: str) -> str:
    return str(run.path(kind).relative_to(run.root))


def save_npz(run: Run, kind: str, **arrays: np.ndarray) -> str:
    with atomic_path(run.path(kind), suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    return rel(run, kind)


def as_run(run: "Run | Path | str") -> Run:
    return run if isinstance(run, Run) else Run.open(run, need=())


def evaluation_for(task_name: str):
    """The registered evaluation of a task, or one line naming the tasks that have one."""
    return EVALUATIONS.get_or_raise(task_name, ConfigError)
