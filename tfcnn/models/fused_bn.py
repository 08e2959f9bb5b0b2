"""Batch normalisation through TensorFlow's fused kernel while training; plain Keras layers in every file.

Keras 3's ``BatchNormalization`` is written with backend-neutral ops: in training it computes the
batch moments (``tf.nn.moments``: a mean, a squared difference, another mean) and then normalises
with ``tf.nn.batch_normalization``, five or six element-wise kernels forward and as many again
backward. TensorFlow's ``FusedBatchNormV3`` does the same in one kernel each way (oneDNN's on a
CPU, cuDNN's on a GPU), which tf.keras used (``fused=True``) before Keras 3. On compact_cnn, the
main job's model, BatchNorm took about a third of the training step on a 2-core CPU; the fused
kernel gives the step back most of it (``bench/batch_norm.py`` measures both, side by side).

:class:`FusedBatchNormalization` is ``keras.layers.BatchNormalization`` with that one change,
taken only where the fused kernel computes exactly what the layer would: training mode, a
trainable layer, a 4-D channels-last input, no mask, no renorm, no cross-replica
synchronisation. Everything else (inference, 2-D inputs after a Dense, frozen layers) is the Keras
layer's own code, so the inference graph, and every exported file traced from it, is unchanged.
The moving statistics get the batch variance Keras uses (the biased one: the fused kernel returns
the Bessel-corrected variance, which is scaled back by (n - 1) / n).

Training swaps the layers in (:func:`with_fused_batch_norm`, a rebuild from the model's config
with the same weights, nested models included) and ``model.keras`` is written with plain Keras
layers again (:func:`without_fused_batch_norm`), so a trained file needs nothing from tfcnn to load.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from tfcnn.models.precision import all_layers
from tfcnn.util import first_line, log

KERAS_BN = {"module": "keras.layers", "class_name": "BatchNormalization", "registered_name": None}
FUSED_NAME = "tfcnn>FusedBatchNormalization"


@keras.saving.register_keras_serializable(package="tfcnn", name="FusedBatchNormalization")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training step runs TensorFlow's fused kernel."""

    def _fusable(self, inputs, training, mask) -> bool:
        rank = len(inputs.shape)
        return bool(
            training
            and self.trainable
            and mask is None
            and rank == 4
            and self.axis in ([rank - 1], [-1], rank - 1, -1)
            and not self.renorm
            and not self.synchronized
            and keras.backend.backend() == "tensorflow"
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)  # as the Keras layer does: statistics in float32
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        y, mean, corrected = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
        )
        n = tf.cast(tf.size(x, out_type=tf.int64) // channels, tf.float32)
        # The Keras layer's moving variance follows the biased batch variance; with one value
        # per channel there is no spread (the kernel's correction divides by zero there).
        variance = tf.where(n > 1.0, corrected * ((n - 1.0) / tf.maximum(n, 1.0)), tf.zeros_like(corrected))
        momentum = self.momentum
        self.moving_mean.assign(
            tf.cast(self.moving_mean, tf.float32) * momentum + tf.stop_gradient(mean) * (1.0 - momentum)
        )
        self.moving_variance.assign(
            tf.cast(self.moving_variance, tf.float32) * momentum + tf.stop_gradient(variance) * (1.0 - momentum)
        )
        return tf.cast(y, self.compute_dtype)


# Keras files a layer's entries in a .weights.h5 file under its class name (snake case), so with
# Keras' class name the weight files of the fused and the plain model are interchangeable (the fit
# engine's backups, a resume after train.fused_batch_norm changed); the registered name above is
# what tells the two apart in a config.
FusedBatchNormalization.__name__ = FusedBatchNormalization.__qualname__ = "BatchNormalization"


def _swap(node: Any, to_fused: bool) -> tuple[Any, int]:
    """The config with every Keras BatchNormalization made fused (or back); and how many changed."""
    if isinstance(node, list):
        parts = [_swap(v, to_fused) for v in node]
        return [p for p, _ in parts], sum(n for _, n in parts)
    if not isinstance(node, dict):
        return node, 0
    changed = 0
    if to_fused and node.get("class_name") == "BatchNormalization" and node.get("module") == "keras.layers":
        node = {**node, "module": FusedBatchNormalization.__module__, "registered_name": FUSED_NAME}
        changed = 1
    elif not to_fused and node.get("registered_name") == FUSED_NAME:
        node = {**node, **KERAS_BN}
        changed = 1
    out = {}
    for key, value in node.items():
        out[key], n = _swap(value, to_fused)
        changed += n
    return out, changed


def count_fused(model: keras.Model) -> int:
    """How many layers of ``model`` (nested models included) are fused batch normalisation."""
    return sum(isinstance(layer, FusedBatchNormalization) for layer in all_layers(model))


def _rebuild(model: keras.Model, to_fused: bool) -> keras.Model:
    """A subclassed model's config holds no layers, so nothing changes and it is returned as is."""
    try:
        config, changed = _swap(model.get_config(), to_fused)
    except NotImplementedError:
        return model
    if not changed:
        return model
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def with_fused_batch_norm(model: keras.Model) -> keras.Model:
    """A rebuild of ``model`` whose BatchNormalization layers use the fused kernel in training
    (same config otherwise, same weights); ``model`` itself when it has none. Call it inside the
    strategy scope the model was built in: the rebuild creates variables.

    The kernel is a speed-up, not a result: a model that cannot be rebuilt from its config (a
    custom layer whose ``get_config`` misses an argument) trains with Keras' layer, and says so.
    """
    try:
        return _rebuild(model, to_fused=True)
    except Exception as exc:  # noqa: BLE001 - from_config of arbitrary layers raises anything
        log.warning(
            "train: fused batch normalisation not used: %s could not be rebuilt from its config (%s: %s); "
            "it trains with Keras' BatchNormalization (set train.fused_batch_norm = false to skip the attempt)",
            model.name, type(exc).__name__, first_line(exc),
        )
        return model


def without_fused_batch_norm(model: keras.Model) -> keras.Model:
    """``model`` with plain ``keras.layers.BatchNormalization`` again (same weights), for files."""
    return _rebuild(model, to_fused=False)
