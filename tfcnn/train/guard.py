"""Non-finite weights never leave training: the checks and the one-line errors both engines share.

When the loss (or the weights) of an epoch go non-finite, the engines keep the last finite
state (the best epoch's weights, else the last finite epoch's) and stop with
``stop_reason = "non_finite_loss"``; with no finite state to keep they raise
:class:`~tfcnn.errors.TrainingError`, so nothing non-finite is checkpointed or saved.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tfcnn.errors import TrainingError
from tfcnn.util import log


def all_finite(weights: Sequence[np.ndarray]) -> bool:
    """True when every floating-point array in ``weights`` is finite (integer arrays always are)."""
    for w in weights:
        a = np.asarray(w)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            return False
    return True


def advice_for(learning_rate: float, clipnorm: float | None, *, prefix: str = "train.") -> str:
    """What to try: a lower learning rate, gradient clipping."""
    clip = f"a lower {prefix}clipnorm (now {clipnorm:g})" if clipnorm else f"set {prefix}clipnorm (e.g. 1.0)"
    return f"lower {prefix}learning_rate (now {learning_rate:g}) or {clip}"


def no_finite_state(epoch: int, advice: str) -> TrainingError:
    """The loss went non-finite with no finite epoch to fall back on."""
    return TrainingError(
        f"train: the training loss went non-finite (NaN or inf) in epoch {epoch}, before any finite epoch to keep; "
        f"nothing was saved; {advice}"
    )


def non_finite_start(epoch: int, advice: str) -> TrainingError:
    """The model's weights are already non-finite before training (a broken model or checkpoint)."""
    return TrainingError(
        f"train: the model's weights are not finite (NaN or inf) before epoch {epoch}; nothing was trained or saved; "
        f"check the model's initializers (or its checkpoint) and {advice}"
    )


def log_kept(epoch: int, kept: int, what: str, advice: str) -> None:
    log.info(
        f"train: the loss went non-finite in epoch {epoch}; keeping the {what} weights of epoch {kept} "
        f"(stop_reason non_finite_loss; {advice})"
    )
