"""The task interface: the training loss and metrics, evaluation, export outputs, verify comparison.

Modelled on the TF Model Garden's task classes (``build_losses``, ``build_metrics``,
``validation_step`` for one kind of model): train, evaluate, export and verify ask the task
instead of assuming a classifier, so a new kind of model is one new module in this package.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from tfcnn.util import Registry

TASKS: Registry = Registry("task", "task")


def latency_text(row: dict[str, Any]) -> str:
    """A verify row's median latency for a progress line: "p50 1.234 ms", or "p50 not timed"
    where the format has no runtime here (CoreML off macOS is predicted by a numpy evaluator,
    whose speed says nothing about a phone's), so no NaN reads like a figure."""
    ms = row.get("latency_ms_median")
    return f"p50 {ms:.3f} ms" if isinstance(ms, (int, float)) and math.isfinite(ms) else "p50 not timed"


class Task:
    """Base class; every method has a docstring saying which stage calls it and why."""

    name: str = ""
    # History columns the engines log per epoch besides loss/val_loss, e.g. ("accuracy",).
    metric_names: tuple[str, ...] = ()
    # The Keras model's headline number verify records (verification.json "keras") and measures drops from.
    reference_name: str = "accuracy"
    # Verify limit keys of the task's own (besides the formats' classifier limits), which
    # `export.thresholds` may override; a task listing them provides format_limits().
    limit_keys: tuple[str, ...] = ()

    def format_limits(self, classifier_limits: dict[str, float]) -> dict[str, float]:
        """Verify: this task's limits for a format whose classifier limits are given."""
        return classifier_limits
    # Whether the task trains on probability-vector labels (mixup / CutMix, data.augment); the
    # engines pass ``soft=True`` to the methods below only for tasks that say so.
    soft_labels: bool = False
    # Whether train.class_weight applies (its labels are classes whose examples can be weighted).
    class_weighted: bool = False
    # Whether `tfcnn predict` applies: the model answers with top-k class labels.
    predicts_labels: bool = False
    # What the data's labels must be (DataInfo.label_kind): class ids, box rows or masks.
    label_kind: str = "classes"
    # Full-integer TFLite: fragments of the tensor names that stay float32, outputs included (a
    # detector's post-processing scope first; () = only the outputs; tfcnn.export.tflite.convert);
    # None: all int8, uint8 outputs.
    int8_float_names: tuple[str, ...] | None = None

    # ------------------------------------------------------------- train
    def loss_fn(self, num_outputs: int, label_smoothing: float = 0.0, *, from_logits: bool = True):
        """Per-example loss ``f(y_true, y_pred) -> [B]`` for the tape engine; ``from_logits=False``
        when the model already ends in its output activation (``train_model(outputs="probabilities")``).
        A task with ``soft_labels`` takes class ids and probability vectors alike (train batches
        are mixed, validation batches are not)."""
        raise NotImplementedError

    def keras_loss(self, label_smoothing: float = 0.0, **kw):
        """The same loss as a Keras loss object, for ``model.compile`` (fit engine, model.keras);
        ``soft=True``: on probability-vector labels."""
        raise NotImplementedError

    def keras_metrics(self, label_smoothing: float = 0.0, **kw) -> list:
        """Fresh Keras metric objects named as in history.csv (both engines); ``soft=True``: they
        take probability-vector labels as well as class ids."""
        raise NotImplementedError

    def prepare_labels(self, y, num_outputs: int, label_smoothing: float = 0.0, **kw):
        """Labels as the loss wants them (e.g. one-hot when smoothing), inside tf.data (fit engine);
        ``soft=True``: as :meth:`keras_loss` with ``soft=True`` wants them."""
        return y

    def check_config(self, cfg: Any) -> None:
        """Validate: refuse (ConfigError, one line) settings this task cannot train with, before
        any data is read (the "task" check of :func:`tfcnn.config.validate`)."""

    def configure(self, cfg: Any, run: Any = None) -> "Task":
        """This task with what a run decided (its config section; from ``run``: e.g. a stored
        threshold). Training, evaluation, export and verify call it; the default needs nothing."""
        return self

    def feed(self, ds, cfg: Any, *, training: bool):
        """The batches both engines train (``training``) or validate on, from the bundle's
        ``(images, labels)`` batches; the default feeds them as they are."""
        return ds

    def check_model(self, model, info: Any) -> None:
        """Train: refuse (ConfigError, one line) a model whose output does not fit the data."""
        from tfcnn.errors import ConfigError

        out = model.outputs[0].shape
        if out[-1] != info.num_classes:
            raise ConfigError(
                f"the model outputs {out[-1]} logits but the data has {info.num_classes} classes; "
                "build it with build_model(..., num_classes=info.num_classes)"
            )

    def check_export(self, model, labels: Sequence[str]) -> None:
        """Export: refuse (ExportError) a model whose output does not fit the labels."""
        from tfcnn.errors import ExportError

        if int(model.outputs[0].shape[-1]) != len(labels):
            raise ExportError(f"model has {model.outputs[0].shape[-1]} outputs but data.json lists {len(labels)} classes")

    def output_text(self, labels: Sequence[str]) -> str:
        """What the exported outputs are, in one sentence (TFLite metadata, CoreML descriptions)."""
        return "Softmax probability per class, in the order of the packed labels.txt"

    def card_limitations(self) -> list[str]:
        """The model card's caveats that depend on what the model outputs (export)."""
        return []

    def describe(self, labels: Sequence[str], model_name: str) -> str:
        """One line saying what the exported model is (contract, card, TFLite metadata)."""
        return f"{len(labels)}-class image classifier ({model_name})"

    # ------------------------------------------------------------- evaluate
    def outputs_to_scores(self, outputs: np.ndarray) -> np.ndarray:
        """Turn raw model outputs (logits) into what artifacts return (probabilities)."""
        raise NotImplementedError

    def headline(self, scores: np.ndarray, labels: np.ndarray, **options: Any) -> dict[str, Any]:
        """Headline test numbers written flat into metrics.json (e.g. test_accuracy)."""
        raise NotImplementedError

    def reference(self, model, images: np.ndarray) -> Any:
        """Verify: what the Keras model gives for the test images, in the artifacts' terms."""
        return self.outputs_to_scores(model.predict(images.astype(np.float32), batch_size=256, verbose=0))

    def reference_score(self, reference: Any, labels: np.ndarray) -> float:
        """Verify: the Keras model's headline number (the classifier's accuracy), which the
        formats' drop limits are measured from."""
        return float(self.headline(reference, labels)["test_accuracy"])

    def verify_columns(self) -> list[tuple[str, str, str, float]]:
        """verification.md's per-format columns besides size and latency: (header, row key,
        format spec, scale); a classifier's table is written by verify itself."""
        return [("accuracy", "accuracy", ".2f", 100), ("agreement", "agreement", ".2f", 100), ("max abs diff", "max_abs_diff", ".2e", 1)]

    def verify_line(self, row: dict[str, Any]) -> str:
        """Verify's progress line for one compared format."""
        return (
            f"accuracy {100 * row['accuracy']:.2f}%, agreement {100 * row['agreement']:.2f}%, "
            f"max|dp| {row['max_abs_diff']:.2e}, {latency_text(row)}"
        )

    # ------------------------------------------------------------- export / verify
    def output_contract(self, labels: Sequence[str]) -> dict[str, Any]:
        """The ``output`` block of contract.json: what every artifact returns."""
        raise NotImplementedError

    def forward(self, model, x):
        """The model's raw outputs for the float pixels `x`, as every artifact and the Keras
        reference compute them: one place, so an inference-time option of a task (the
        segmenter's test-time flip) cannot reach some formats and miss others."""
        return model(x, training=False)

    def mobile_outputs(self, outputs, inputs=None) -> dict:
        """In-graph (tf) outputs of the batch-1 mobile wrappers (TFLite, CoreML) from the model's
        raw outputs (``inputs``: the float pixels the model got, for tasks that compare with them)."""
        raise NotImplementedError

    def serving_outputs(self, outputs, label_lookup, inputs=None) -> dict:
        """In-graph outputs of the serving signatures (SavedModel, ONNX); ``label_lookup(ids)`` maps class ids to names."""
        raise NotImplementedError

    def compare(self, outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """How an artifact's outputs compare with the Keras model's on the same images."""
        raise NotImplementedError

    def failures(self, row: dict[str, Any], limits: dict[str, float], reference_score: float) -> list[str]:
        """One readable line per limit a compared row breaks (empty: passes). NaN always fails."""
        raise NotImplementedError


def get_task(name: str, cfg: Any = None, run: Any = None) -> Task:
    """The registered task called ``name`` (one error line naming the choices otherwise),
    configured for ``cfg`` (and ``run``) when given (:meth:`Task.configure`)."""
    task = TASKS.get_or_raise(name)
    return task.configure(cfg, run) if cfg is not None else task
