"""The two early-stopping rules, as pure state machines fed one epoch's numbers at a time.

Both engines use these same objects (the fit engine through thin Keras callbacks), so the
stopping behaviour is identical whichever engine trains, can be tested on scripted loss
sequences without training anything, and its state can be stored in a checkpoint and resumed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping, Sequence

from tfcnn.config import EarlyStoppingConfig
from tfcnn.errors import ConfigError


def monitors(metric_names: Sequence[str]) -> tuple[str, ...]:
    """What the engines log per epoch, so what a rule can watch: the loss and the task's metrics,
    each on the training and the validation split."""
    return ("loss", *metric_names, "val_loss", *(f"val_{m}" for m in metric_names))


MONITORS = monitors(("accuracy",))  # the classification task's


def monitor_error(monitor: str, allowed: Sequence[str]) -> ConfigError:
    return ConfigError(
        f"train.early_stopping.monitor = {monitor!r} is not recorded; choose one of {', '.join(allowed)}"
    )


def resolve_mode(monitor: str, mode: str) -> Literal["min", "max"]:
    """'auto' means max for accuracy-like metrics and min for losses (as Keras does)."""
    if mode in ("min", "max"):
        return mode  # type: ignore[return-value]
    return "max" if "acc" in monitor else "min"


@dataclass
class PatienceRule:
    """Keras EarlyStopping semantics on one monitored value.

    An epoch improves when its value beats the best so far by more than ``min_delta`` (in the
    monitor's direction); after ``patience`` epochs in a row without improvement, stop.
    Epoch numbers are whatever the caller feeds (tfcnn uses 1-based epochs).
    """

    monitor: str = "val_loss"
    mode: str = "auto"
    patience: int = 5
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    stopped_epoch: int | None = None

    def __post_init__(self) -> None:
        self.mode = resolve_mode(self.monitor, self.mode)

    def improves(self, value: float) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, epoch: int, value: float) -> bool:
        """Feed one epoch's monitored value; returns True if this epoch is the new best."""
        if self.improves(value):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            return True
        self.wait += 1
        if self.wait >= self.patience and self.stopped_epoch is None:
            self.stopped_epoch = epoch
        return False

    @property
    def should_stop(self) -> bool:
        return self.stopped_epoch is not None

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "PatienceRule":
        return cls(**state)


@dataclass
class TargetLossRule:
    """The course's rule: stop once the training loss stayed below ``target`` for ``patience``
    consecutive epochs; any epoch at or above the target resets the count."""

    target: float
    patience: int = 3
    consecutive: int = 0
    stopped_epoch: int | None = None

    def update(self, epoch: int, loss: float) -> bool:
        """Feed one epoch's training loss; returns True when training should stop."""
        if loss is not None and math.isfinite(loss) and loss < self.target:
            self.consecutive += 1
        else:
            self.consecutive = 0
        if self.consecutive >= self.patience and self.stopped_epoch is None:
            self.stopped_epoch = epoch
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.stopped_epoch is not None

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "TargetLossRule":
        return cls(**state)


@dataclass
class StopRules:
    """Both rules plus the verdict, as configured by ``train.early_stopping``.

    ``patience`` is None when early stopping is disabled; ``target`` is None without a
    ``target_loss``. The patience rule also tracks the best epoch for restoring best weights.
    """

    patience: PatienceRule | None
    target: TargetLossRule | None
    reason: str | None = None
    stopped_epoch: int | None = None
    improved: bool = field(default=False, repr=False)

    @classmethod
    def from_config(
        cls, es: EarlyStoppingConfig, *, has_validation: bool, monitors: Sequence[str] = MONITORS
    ) -> "StopRules":
        """The rules ``es`` asks for; ``monitors`` are the values the engines log (see :func:`monitors`)."""
        if es.monitor not in monitors:
            raise monitor_error(es.monitor, monitors)
        if es.enabled and es.monitor.startswith("val_") and not has_validation:
            raise ConfigError(
                f"train.early_stopping.monitor = {es.monitor!r} needs a validation split, but it is empty; "
                "set data.val_fraction > 0, monitor 'loss', or early_stopping.enabled = false"
            )
        patience = (
            PatienceRule(monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta)
            if es.enabled
            else None
        )
        target = TargetLossRule(es.target_loss, es.target_patience) if es.target_loss is not None else None
        return cls(patience=patience, target=target)

    @property
    def best_epoch(self) -> int | None:
        return self.patience.best_epoch if self.patience else None

    def update(self, epoch: int, logs: Mapping[str, float]) -> str | None:
        """Feed one epoch's logs; returns the stop reason once a rule fires, else None.

        ``self.improved`` tells whether this epoch is the monitored best (to snapshot weights).
        """
        self.improved = False
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(loss):
            self.reason, self.stopped_epoch = "non_finite_loss", epoch
            return self.reason
        if self.patience is not None:
            self.improved = self.patience.update(epoch, logs.get(self.patience.monitor, math.nan))
            if self.patience.should_stop and self.reason is None:
                self.reason, self.stopped_epoch = "early_stopping", epoch
        if self.target is not None and self.target.update(epoch, loss) and self.reason is None:
            self.reason, self.stopped_epoch = "target_loss", epoch
        return self.reason

    def state(self) -> dict[str, Any]:
        return {
            "patience": self.patience.state() if self.patience else None,
            "target": self.target.state() if self.target else None,
            "reason": self.reason,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        if self.patience is not None and state.get("patience"):
            saved = dict(state["patience"])
            # The checkpoint's counters, the current config's thresholds (they may have been raised on resume).
            for key in ("monitor", "mode", "patience", "min_delta"):
                saved[key] = getattr(self.patience, key)
            self.patience = PatienceRule.from_state(saved)
            if self.patience.wait < self.patience.patience:
                self.patience.stopped_epoch = None
        if self.target is not None and state.get("target"):
            saved = dict(state["target"])
            saved.update(target=self.target.target, patience=self.target.patience)
            self.target = TargetLossRule.from_state(saved)
            if self.target.consecutive < self.target.patience:
                self.target.stopped_epoch = None
        reason = state.get("reason")
        if reason == "early_stopping" and not (self.patience and self.patience.should_stop):
            reason = None  # patience was raised (or disabled) for the resumed run
        if reason == "target_loss" and not (self.target and self.target.should_stop):
            reason = None
        self.reason = reason
        self.stopped_epoch = state.get("stopped_epoch") if reason else None


@dataclass
class PlateauRule:
    """Keras ReduceLROnPlateau semantics for the tape engine: after ``patience`` epochs without
    improvement of the monitored value, multiply the learning rate by ``factor`` (not below ``min_lr``)."""

    monitor: str = "val_loss"
    mode: str = "auto"
    patience: int = 2
    min_delta: float = 0.0
    factor: float = 0.5
    min_lr: float = 0.0
    best: float | None = None
    wait: int = 0

    def __post_init__(self) -> None:
        self.mode = resolve_mode(self.monitor, self.mode)

    def update(self, value: float, lr: float) -> float:
        """Feed one epoch's monitored value and the current lr; returns the lr for the next epoch."""
        finite = value is not None and math.isfinite(value)
        if finite and (
            self.best is None
            or (value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta)
        ):
            self.best, self.wait = float(value), 0
            return lr
        self.wait += 1
        if self.wait >= self.patience and lr > self.min_lr:
            self.wait = 0
            return max(lr * self.factor, self.min_lr)
        return lr

    def state(self) -> dict[str, Any]:
        return asdict(self)
