"""A few-thousand-parameter CNN for tests and smoke runs: seconds to train, same frame as the rest."""

from __future__ import annotations

from tfcnn.config import ModelConfig
from tfcnn.models.lazy import keras
from tfcnn.models.registry import register, regularizer


@register("tiny_cnn")
def tiny_cnn(x: keras.KerasTensor, cfg: ModelConfig) -> keras.KerasTensor:
    width = max(int(8 * cfg.width), 1)
    for i, filters in enumerate((width, 2 * width)):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", kernel_regularizer=regularizer(cfg), name=f"conv{i + 1}"
        )(x)
        if cfg.batch_norm:
            x = keras.layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = keras.layers.Activation(cfg.activation, name=f"act{i + 1}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name="dropout")(x)
    return x
