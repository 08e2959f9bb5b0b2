"""What a training run leaves in the run directory: the history and the Diagnostics record.

Both engines feed the same :class:`RunRecord` one epoch at a time; its whole state is a JSON
mapping, which the engines store in their checkpoints so a resumed run rewrites the files with
the epochs before the interruption intact (and nothing from a half-finished epoch). Where the
files go and how they are laid out is :class:`tfcnn.run.Run`'s business.
"""

from __future__ import annotations

import dataclasses
import math

from tfcnn.util import finite  # noqa: F401  (re-exported)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tfcnn.config import PipelineConfig, to_dict
from tfcnn.errors import TfcnnError
from tfcnn.run import Diagnostics, Run


def history_columns(metric_names: Sequence[str]) -> tuple[str, ...]:
    """history.csv's columns for a task logging ``metric_names`` (besides the loss) per epoch."""
    return ("epoch", "loss", *metric_names, "val_loss", *(f"val_{m}" for m in metric_names), "lr", "seconds")


HISTORY_COLUMNS = history_columns(("accuracy",))  # the classification task's columns

# Settings that may change between an interrupted run and its resumption without changing
# what the checkpoint means (more epochs, different logging, looser stopping).
RESUMABLE_KEYS = {
    "epochs",
    "tensorboard",
    "histogram_freq",
    "gradient_norms",
    "checkpoint_every",
    "max_checkpoints",
    "early_stopping",
    "steps_per_execution",
    "jit_compile",
    "fused_batch_norm",  # the same variables either way: a kernel choice
}


@dataclass
class RunRecord:
    """Per-epoch history and diagnostics of one run (1-based epochs)."""

    engine: str
    strategy: str
    replicas: int
    policy: str
    fingerprint: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, float]] = field(default_factory=list)
    gradient_norms: dict[str, list[float]] | None = None
    best_epoch: int | None = None
    stopped_epoch: int | None = None
    stop_reason: str | None = None
    resumed_at: list[int] = field(default_factory=list)  # epochs completed before each resume
    restored_epoch: int | None = None  # the epoch whose weights were kept after a non-finite loss
    train_images: int = 0  # images trained on, all sessions (for throughput)
    train_seconds: float = 0.0  # time inside training steps (validation excluded), all sessions
    columns: list[str] = field(default_factory=lambda: list(HISTORY_COLUMNS))  # history.csv, from the task

    @property
    def epochs_done(self) -> int:
        return int(self.rows[-1]["epoch"]) if self.rows else 0

    def add_epoch(self, row: dict[str, float], norms: dict[str, float] | None = None) -> None:
        clean = {k: _num(row.get(k)) for k in self.columns}
        clean["epoch"] = int(row["epoch"])
        self.rows.append(clean)
        if norms is not None:
            if self.gradient_norms is None:
                self.gradient_norms = {}
            for name, value in norms.items():
                series = self.gradient_norms.setdefault(name, [])
                series.extend([math.nan] * (len(self.rows) - 1 - len(series)))
                series.append(float(value))

    def history(self) -> dict[str, list[float]]:
        return {k: [r[k] for r in self.rows] for k in self.columns}

    def state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "RunRecord":
        """The record back from :meth:`state`; null numbers (JSON has no NaN, see :func:`finite`) become NaN."""
        state = dict(state)
        state["rows"] = [{k: int(v) if k == "epoch" else _num(v) for k, v in row.items()} for row in state.get("rows", [])]
        if state.get("gradient_norms") is not None:
            state["gradient_norms"] = {k: [_num(v) for v in series] for k, series in state["gradient_norms"].items()}
        return cls(**state)

    def images_per_second(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds > 0 else 0.0

    def write(self, run: Run, extra: dict[str, Any] | None = None) -> None:
        """(Re)write the history and the Diagnostics record from the record (each atomically)."""
        run.write_history(tuple(self.columns), self.rows)
        run.write(
            Diagnostics(
                engine=self.engine,
                strategy=self.strategy,
                replicas=self.replicas,
                precision_policy=self.policy,
                epochs_run=self.epochs_done,
                best_epoch=self.best_epoch,
                stopped_epoch=self.stopped_epoch,
                stop_reason=self.stop_reason,
                lr=[r["lr"] for r in self.rows],
                epoch_seconds=[r["seconds"] for r in self.rows],
                gradient_norms=self.gradient_norms,
                resumed_at=list(self.resumed_at),
                images_per_second=round(self.images_per_second(), 2),
                extra={**(extra or {}), **({"restored_epoch": self.restored_epoch} if self.restored_epoch else {})},
            )
        )


def fingerprint(cfg: PipelineConfig) -> dict[str, Any]:
    """The settings a checkpoint depends on (model, data, training minus RESUMABLE_KEYS)."""
    train = {k: v for k, v in to_dict(cfg.train).items() if k not in RESUMABLE_KEYS}
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in ("path", "cache")}  # where, not what
    fp = {"data": data, "model": to_dict(cfg.model), "train": train}
    section = getattr(cfg, cfg.task, None)  # a task's own settings (e.g. [reconstruction]: loss, noise)
    if cfg.task != "classification":
        fp["task"] = cfg.task
        if section is not None:
            fp[cfg.task] = to_dict(section)
    return fp


def check_fingerprint(
    saved: dict[str, Any],
    current: dict[str, Any],
    where: Path,
    *,
    source: str = "the config now says",
    fix: str = "use a new run directory or delete its checkpoints/ to start over",
) -> None:
    """Refuse to resume a checkpoint made with other settings (naming the first difference).

    ``source`` and ``fix`` word the line for the caller (a pipeline config, a train_model call).
    """
    diff = _first_difference(saved, current)
    if diff is not None:
        key, old, new = diff
        raise TfcnnError(f"{where} holds a run made with {key} = {old!r}, but {source} {new!r}; {fix}")


def _first_difference(a: Any, b: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
            if d:
                return d
        return None
    return None if a == b else (prefix, a, b)




def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
