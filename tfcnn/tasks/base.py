"""The task interface: the training loss and metrics, evaluation, export outputs, verify comparison.

Modelled on the TF Model Garden's task classes (``build_losses``, ``build_metrics``,
``validation_step`` for one kind of model): train, evaluate, export and verify ask the task
instead of assuming a classifier, so a new kind of model is one new module in this package.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tfcnn.util import Registry

TASKS: Registry = Registry("task", "task")


class Task:
    """Base class; every method has a docstring saying which stage calls it and why."""

    name: str = ""
    # History columns the engines log per epoch besides loss/val_loss, e.g. ("accuracy",).
    metric_names: tuple[str, ...] = ()

    # ------------------------------------------------------------- train
    def loss_fn(self, num_outputs: int, label_smoothing: float = 0.0, *, from_logits: bool = True):
        """Per-example loss ``f(y_true, y_pred) -> [B]`` for the tape engine; ``from_logits=False``
        when the model already ends in its output activation (``train_model(outputs="probabilities")``)."""
        raise NotImplementedError

    def keras_loss(self, label_smoothing: float = 0.0):
        """The same loss as a Keras loss object, for ``model.compile`` (fit engine, model.keras)."""
        raise NotImplementedError

    def keras_metrics(self, label_smoothing: float = 0.0) -> list:
        """Fresh Keras metric objects named as in history.csv (fit engine)."""
        raise NotImplementedError

    def prepare_labels(self, y, num_outputs: int, label_smoothing: float = 0.0):
        """Labels as the loss wants them (e.g. one-hot when smoothing), inside tf.data."""
        return y

    # ------------------------------------------------------------- evaluate
    def outputs_to_scores(self, outputs: np.ndarray) -> np.ndarray:
        """Turn raw model outputs (logits) into what artifacts return (probabilities)."""
        raise NotImplementedError

    def headline(self, scores: np.ndarray, labels: np.ndarray, **options: Any) -> dict[str, Any]:
        """Headline test numbers written flat into metrics.json (e.g. test_accuracy)."""
        raise NotImplementedError

    # ------------------------------------------------------------- export / verify
    def output_contract(self, labels: Sequence[str]) -> dict[str, Any]:
        """The ``output`` block of contract.json: what every artifact returns."""
        raise NotImplementedError

    def mobile_outputs(self, outputs) -> dict:
        """In-graph (tf) outputs of the batch-1 mobile wrappers (TFLite, CoreML) from the model's raw outputs."""
        raise NotImplementedError

    def serving_outputs(self, outputs, label_lookup) -> dict:
        """In-graph outputs of the serving signatures (SavedModel, ONNX); ``label_lookup(ids)`` maps class ids to names."""
        raise NotImplementedError

    def compare(self, outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """How an artifact's outputs compare with the Keras model's on the same images."""
        raise NotImplementedError

    def failures(self, row: dict[str, Any], limits: dict[str, float], reference_score: float) -> list[str]:
        """One readable line per limit a compared row breaks (empty: passes). NaN always fails."""
        raise NotImplementedError


def get_task(name: str) -> Task:
    """The registered task called ``name`` (one error line naming the choices otherwise)."""
    return TASKS.get_or_raise(name)
