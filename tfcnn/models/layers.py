"""Serialisable layers tfcnn adds around models (registered with Keras under package "tfcnn").

They live in the models layer so that :func:`tfcnn.models.saved.load_trained_model` can register
them before reading any ``model.keras`` (a Lambda layer would need ``safe_mode=False`` to load).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tfcnn")
class ProbabilitiesToLogits(keras.layers.Layer):
    """log(max(p, eps)): turns a softmax model into a logits one, since softmax(log p) = p.

    Used when a model trained outside tfcnn ends in a softmax (``tfcnn.export_model(...,
    outputs="probabilities")``): every tfcnn stage then treats it like its own logits models,
    and the exported probabilities equal the model's own.
    """

    def __init__(self, epsilon: float = 1e-30, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, p):
        return keras.ops.log(keras.ops.maximum(keras.ops.cast(p, "float32"), self.epsilon))

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}
