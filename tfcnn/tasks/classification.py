"""Image classification: softmax cross-entropy (with optional label smoothing), accuracy, top-1
agreement and probability differences between an artifact and the Keras model."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from tfcnn.tasks.base import TASKS, Task


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float64 then float32."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _is_soft(y, outputs) -> bool:
    """Probability-vector labels (mixup / CutMix) rather than class ids: known from the static rank."""
    return y.shape.rank is not None and y.shape.rank == outputs.shape.rank


def _argmax_accuracy(y_true, y_pred):
    """1.0 where the predicted class is the label's class: the id itself, or the argmax of a
    probability vector (a mixed label's larger share; a tie goes to the lower class id)."""
    import tensorflow as tf

    pred = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
    if _is_soft(y_true, y_pred):
        true = tf.argmax(y_true, axis=-1, output_type=tf.int32)
    else:
        true = tf.reshape(tf.cast(y_true, tf.int32), tf.shape(pred))
    return tf.cast(tf.equal(true, pred), tf.float32)


class Classification(Task):
    name = "classification"
    metric_names = ("accuracy",)
    soft_labels = True  # mixup / CutMix: cross-entropy on probability vectors, accuracy on their argmax
    class_weighted = True  # train.class_weight
    predicts_labels = True  # tfcnn predict
    # softmax(logits / temperature) is what evaluation reports raw (1.0) and what the artifacts
    # return once evaluate.temperature_scaling fitted one (configure() reads it from the run)
    temperature: float = 1.0

    def configure(self, cfg: Any, run: Any = None) -> "Classification":
        """This task with the run's fitted temperature when evaluate.temperature_scaling is on
        (stored in its Evaluation record's calibration); 1.0 otherwise or before evaluation."""
        import copy

        t = _stored_temperature(cfg, run)
        if t == self.temperature:
            return self
        task = copy.copy(self)
        task.temperature = t
        return task

    def loss_fn(self, num_outputs: int, label_smoothing: float = 0.0, *, from_logits: bool = True):
        """Class ids (sparse, or one-hot when smoothing) and probability vectors (categorical,
        smoothing applied on top: y * (1 - s) + s / K) alike, decided per call from the label
        rank, so the tape engine's mixed train batches and plain validation batches share it."""
        import keras
        import tensorflow as tf

        def loss(y, outputs):
            if _is_soft(y, outputs):
                return keras.losses.categorical_crossentropy(
                    tf.cast(y, outputs.dtype), outputs, from_logits=from_logits, label_smoothing=label_smoothing
                )
            if label_smoothing > 0:
                onehot = tf.one_hot(tf.cast(y, tf.int32), num_outputs, dtype=outputs.dtype)
                return keras.losses.categorical_crossentropy(
                    onehot, outputs, from_logits=from_logits, label_smoothing=label_smoothing
                )
            return keras.losses.sparse_categorical_crossentropy(y, outputs, from_logits=from_logits)

        return loss

    def keras_loss(self, label_smoothing: float = 0.0, *, soft: bool = False):
        """``soft``: the fit engine trains on probability vectors (its validation labels are
        one-hot encoded by :meth:`prepare_labels`), so the categorical loss it is."""
        import keras

        if label_smoothing > 0 or soft:
            return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def keras_metrics(self, label_smoothing: float = 0.0, *, soft: bool = False) -> list:
        """``soft``: one accuracy that takes class ids and probability vectors (the tape engine
        feeds mixed train batches and plain validation batches to the same metric objects)."""
        import keras

        if soft:
            return [keras.metrics.MeanMetricWrapper(_argmax_accuracy, name="accuracy")]
        if label_smoothing > 0:
            return [keras.metrics.CategoricalAccuracy(name="accuracy")]
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def prepare_labels(self, y, num_outputs: int, label_smoothing: float = 0.0, *, soft: bool = False):
        """One-hot when smoothing or ``soft`` (probability vectors pass through as float32)."""
        import tensorflow as tf

        if y.dtype.is_floating and y.shape.rank == 2:
            return tf.cast(y, tf.float32)
        return tf.one_hot(tf.cast(y, tf.int32), num_outputs) if (label_smoothing > 0 or soft) else y

    def outputs_to_scores(self, outputs: np.ndarray) -> np.ndarray:
        return softmax(np.asarray(outputs, np.float64) / self.temperature)

    def headline(self, scores: np.ndarray, labels: np.ndarray, **options: Any) -> dict[str, Any]:
        labels = np.asarray(labels).astype(np.int64)
        return {"test_accuracy": float(np.mean(scores.argmax(1) == labels)) if len(labels) else math.nan}

    def output_contract(self, labels: Sequence[str]) -> dict[str, Any]:
        return {"kind": "probabilities", "activation": "softmax", "num_classes": len(labels), "temperature": self.temperature}

    def mobile_outputs(self, outputs, inputs=None) -> dict:
        import tensorflow as tf

        return {"probabilities": tf.nn.softmax(self._scaled(outputs), axis=-1)}

    def serving_outputs(self, outputs, label_lookup, inputs=None) -> dict:
        import tensorflow as tf

        p = tf.nn.softmax(self._scaled(outputs), axis=-1)
        class_id = tf.argmax(p, axis=-1)
        return {"probabilities": p, "class_id": tf.cast(class_id, tf.int32), "label": label_lookup(class_id)}

    def card_limitations(self) -> list[str]:
        calibrated = (
            f"Probabilities are softmax(logits / {self.temperature:.4g}), the temperature fitted on the validation split "
            "(calibrated on that data, not on other domains)"
            if self.temperature != 1.0
            else "Probabilities are softmax outputs, not calibrated confidences (evaluate.temperature_scaling would fit a temperature)"
        )
        return [
            "An out-of-scope image still gets a confident-looking label: there is no 'none of these' class.",
            f"{calibrated}.",
            "Quantized variants (float16, dynamic, int8) can change the top-1 class on borderline images; "
            "verification.json lists the int8 changes on the test split.",
        ]

    def _scaled(self, outputs):
        """The logits the exported softmax takes: divided by the temperature when one was fitted
        (no op otherwise, so an unscaled export's graph is unchanged)."""
        import tensorflow as tf

        x = tf.cast(outputs, tf.float32)
        return x if self.temperature == 1.0 else x / tf.constant(self.temperature, tf.float32)

    def compare(self, outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Accuracy, top-1 agreement, max/mean |p - p_keras|; a non-finite output makes every number NaN."""
        probs = np.asarray(outputs, np.float64)
        ref = np.asarray(reference, np.float64)
        if probs.shape != ref.shape:
            raise ValueError(f"artifact returned shape {probs.shape}, the Keras model {ref.shape}")
        if not np.all(np.isfinite(probs)) or not np.all(np.isfinite(ref)):
            nan = math.nan
            return {"accuracy": nan, "agreement": nan, "max_abs_diff": nan, "mean_abs_diff": nan, "non_finite": True}
        diff = np.abs(probs - ref)
        return {
            "accuracy": round(float(np.mean(probs.argmax(1) == labels)), 6),
            "agreement": round(float(np.mean(probs.argmax(1) == ref.argmax(1))), 6),
            "max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        }

    def failures(self, row: dict[str, Any], limits: dict[str, float], reference_score: float) -> list[str]:
        """Written so that NaN fails: each check asks 'is it provably within the limit?'."""
        fails = []
        if row.get("non_finite"):
            fails.append("the artifact returned non-finite values (NaN or infinity)")
        if "max_abs_diff" in limits:
            v = row.get("max_abs_diff")
            if v is None or not (v <= limits["max_abs_diff"]):
                fails.append(f"max |p - p_keras| = {_num(v)} > {limits['max_abs_diff']:.3g}")
        if "agreement" in limits:
            v = row.get("agreement")
            if v is None or not (v >= limits["agreement"]):
                fails.append(f"top-1 agreement with Keras {_pct(v)} < {100 * limits['agreement']:.2f}%")
        if "max_accuracy_drop" in limits:
            v = row.get("accuracy")
            drop = (reference_score - v) if v is not None else math.nan
            if not (drop <= limits["max_accuracy_drop"] + 1e-12):
                fails.append(f"accuracy drop {_pts(drop)} points > {100 * limits['max_accuracy_drop']:.2f}")
        return fails


def _stored_temperature(cfg: Any, run: Any) -> float:
    if cfg is None or run is None or not getattr(getattr(cfg, "evaluate", None), "temperature_scaling", False):
        return 1.0
    from tfcnn.run import Evaluation, as_run

    try:
        ev = as_run(run, need=()).read_optional(Evaluation)
    except Exception:  # noqa: BLE001 - an unreadable evaluation: the stage that reads it reports that
        return 1.0
    t = ((ev.details.get("calibration") or {}).get("temperature") if ev is not None else None)
    return float(t) if isinstance(t, (int, float)) and math.isfinite(t) and t > 0 else 1.0


def _num(v: Any) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.3g}"


def _pct(v: Any) -> str:
    return "nan%" if v is None or not math.isfinite(v) else f"{100 * v:.2f}%"


def _pts(v: Any) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"


TASKS.register("classification", Classification())
