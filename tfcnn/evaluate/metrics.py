"""Classification metrics from logits: Keras metrics for loss/accuracy/top-k, a confusion matrix for the rest.

Per-class precision, recall and F1 all derive from the confusion matrix, so the numbers in
evaluation.json, the per-class table and the confusion-matrix PNG can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfcnn.tasks.classification import softmax
from tfcnn.util import keras_verbose


@dataclass
class Predictions:
    """The model's outputs over one split, in the split's order (bundle.arrays[split])."""

    logits: np.ndarray  # float32 [N, K]
    labels: np.ndarray  # int32 [N]
    loss: float
    accuracy: float
    top_k: int
    top_k_accuracy: float

    @property
    def probs(self) -> np.ndarray:
        return softmax(self.logits)

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(axis=1).astype(np.int32)


def predict_split(
    model: keras.Model, batches: Iterable, num_classes: int, top_k: int = 5, total: int | None = None
) -> Predictions:
    """One pass over (uint8 images, int labels) batches, updating Keras metrics as it goes."""
    k = max(1, min(top_k, num_classes))
    loss_m = keras.metrics.SparseCategoricalCrossentropy(from_logits=True)
    acc_m = keras.metrics.SparseCategoricalAccuracy()
    topk_m = keras.metrics.SparseTopKCategoricalAccuracy(k=k, from_sorted_ids=False)
    infer = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False), reduce_retracing=True)
    bar = keras.utils.Progbar(total, unit_name="image", verbose=keras_verbose())
    all_logits, all_labels = [], []
    for x, y in batches:
        logits = tf.cast(infer(x), tf.float32)
        y = tf.cast(y, tf.int32)
        for m in (loss_m, acc_m, topk_m):
            m.update_state(y, logits)
        all_logits.append(logits.numpy())
        all_labels.append(y.numpy())
        bar.add(int(y.shape[0]))
    if not all_labels:
        raise ValueError("the test split is empty; nothing to evaluate")
    return Predictions(
        logits=np.concatenate(all_logits).astype(np.float32),
        labels=np.concatenate(all_labels).astype(np.int32),
        loss=float(loss_m.result()),
        accuracy=float(acc_m.result()),
        top_k=k,
        top_k_accuracy=float(topk_m.result()),
    )


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    return tf.math.confusion_matrix(labels, predicted, num_classes=num_classes, dtype=tf.int64).numpy()


def per_class_auc(probs: np.ndarray, labels: np.ndarray) -> list[dict[str, float | None]]:
    """One-vs-rest ROC-AUC and PR-AUC (average precision) of each class's probability column.

    Why both: on imbalanced data ROC-AUC stays high while a rare class's precision collapses;
    PR-AUC shows that. A class with no positive (or no negative) test image has no curve:
    None, never NaN, since the record is strict JSON and NaN must not read as a number.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    out: list[dict[str, float | None]] = []
    for k in range(probs.shape[1]):
        positive = labels == k
        if positive.all() or not positive.any():
            out.append({"roc_auc": None, "pr_auc": None})
            continue
        out.append({
            "roc_auc": float(roc_auc_score(positive, probs[:, k])),
            "pr_auc": float(average_precision_score(positive, probs[:, k])),
        })
    return out


def per_class_metrics(cm: np.ndarray, class_names: Sequence[str]) -> dict:
    """Precision/recall/F1/support per class plus macro and support-weighted averages.

    A class never predicted has precision 0 (sklearn's zero_division=0 convention), so an
    ignored class drags the macro average down instead of vanishing from it.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    rows = [
        {"class": i, "name": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for i, (name, p, r, f, s) in enumerate(zip(class_names, precision, recall, f1, support))
    ]
    total = max(support.sum(), 1.0)
    avg = {
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "weighted": {
            "precision": float((precision * support).sum() / total),
            "recall": float((recall * support).sum() / total),
            "f1": float((f1 * support).sum() / total),
        },
    }
    return {"per_class": rows, "averages": avg}
