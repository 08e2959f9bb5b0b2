"""Class weights for imbalanced data (``train.class_weight``), the same in both engines.

Why not Keras' ``fit(class_weight=...)``: it looks a weight up by the integer label, so it
cannot weigh mixup/CutMix's probability-vector labels, and the tape engine has no such argument.
Here a training example's weight is ``w[label]`` for a class id and ``sum_k y_k w[k]`` for a
probability vector (a mixed image weighs as its mix of classes); the tape engine multiplies its
per-example loss by it, the fit engine gets it as Keras' ``sample_weight``. Validation and test
losses stay unweighted, so ``val_loss`` means the same with and without weights.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from tfcnn.errors import ConfigError


def class_weights(setting: Any, class_names: Sequence[str], train_labels: np.ndarray) -> list[float] | None:
    """One weight per class from ``train.class_weight``: None (all 1), ``"balanced"``
    (``n / (K * n_k)``, scikit-learn's rule, so the weighted class counts are equal and the mean
    weight per training image is 1) or a table of class name or id -> weight (others 1)."""
    if setting is None:
        return None
    k = len(class_names)
    if setting == "balanced":
        counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=k).astype(np.float64)
        if (counts == 0).any():  # the data stage refuses such data; a caller of this function may not
            missing = [class_names[i] for i in np.flatnonzero(counts == 0)]
            raise ConfigError(f"train.class_weight = 'balanced' needs training images of every class; none of {missing}")
        return [float(v) for v in counts.sum() / (k * counts)]
    weights = [1.0] * k
    index = {name: i for i, name in enumerate(class_names)}
    for key, value in setting.items():
        if key in index:
            i = index[key]
        elif str(key).isdigit() and int(key) < k:
            i = int(key)
        else:
            raise ConfigError(
                f"train.class_weight: {key!r} is not a class; give class names ({', '.join(map(repr, class_names[:10]))}"
                f"{', ...' if k > 10 else ''}) or ids 0..{k - 1}"
            )
        weights[i] = float(value)
    return weights


def example_weights(labels: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Per-example weight: ``weights[label]`` for class ids, ``labels @ weights`` for probability vectors."""
    if labels.shape.rank == 2:
        return tf.linalg.matvec(tf.cast(labels, weights.dtype), weights)
    return tf.gather(weights, tf.cast(labels, tf.int32))
