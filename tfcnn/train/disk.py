"""Enough free disk for a run, checked before its first epoch.

A run that dies of a full disk mid-training loses the epoch it was writing and may leave a
half-written checkpoint behind; one line before training says how much it needs instead. The
estimate comes from the built model's parameter count (so it runs once the model exists, after
the data is decoded; what the data stage writes is small beside it):

* each checkpoint holds the weights, the optimizer's slots (Adam/AdamW/Lion... 2 per weight,
  momentum SGD/RMSprop 1, plain SGD/Adagrad 1) and the best-epoch copy, ``max_checkpoints`` of
  them kept plus the one being written (CheckpointManager deletes the oldest after writing);
* ``model.keras``, the fit engine's best / last weights and its backup: a few more weight copies;
* a fixed allowance for history, plots, predictions and TensorBoard logs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tfcnn.config import TrainConfig
from tfcnn.errors import TrainingError
from tfcnn.util import format_bytes

ALLOWANCE = 64 * 2**20  # logs, plots, predictions, TensorBoard
SLOTS = {"adam": 2, "adamw": 2, "lion": 1, "sgd": 1, "rmsprop": 2, "adagrad": 1}
EXTRA_COPIES = 4  # model.keras, best / last weights (fit), the fit backup


def needed_bytes(parameters: int, tc: TrainConfig, bytes_per_value: int = 4) -> int:
    """The estimate described in the module docstring."""
    slots = SLOTS.get(tc.optimizer, 2) + (1 if tc.use_ema else 0) + (1 if tc.gradient_accumulation_steps > 1 else 0)
    per_checkpoint = (1 + slots + 1) * parameters * bytes_per_value
    return (tc.max_checkpoints + 1) * per_checkpoint + EXTRA_COPIES * parameters * bytes_per_value + ALLOWANCE


def check_free_space(root: Path, parameters: int, tc: TrainConfig) -> None:
    """Raise one TrainingError line when ``root``'s file system has less free space than the run needs."""
    need = needed_bytes(parameters, tc)
    free = shutil.disk_usage(Path(root)).free
    if free < need:
        raise TrainingError(
            f"the run directory {str(root)!r} has {format_bytes(free)} free but this run needs about {format_bytes(need)} "
            f"({parameters:,} parameters, {tc.max_checkpoints} checkpoints kept with {tc.optimizer}'s slots); "
            "free some space, choose another --out, or lower train.max_checkpoints"
        )
