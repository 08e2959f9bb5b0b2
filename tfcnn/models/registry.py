"""Name -> builder registry, and the common frame every architecture sits in.

Every tfcnn model has the same ends so later stages can rely on them: an ``image`` input taking
float32 pixel values in [0, 255] (NHWC), a ``normalize`` Normalization layer holding the training
split's per-channel mean/std, and a float32 ``logits`` Dense output (kept float32 under mixed
precision). Builders only write the body in between.
"""

from __future__ import annotations

from typing import Callable, Protocol

import keras
import numpy as np

from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError


class Body(Protocol):
    def __call__(self, x: keras.KerasTensor, cfg: ModelConfig) -> keras.KerasTensor: ...


_REGISTRY: dict[str, Body] = {}


def register(name: str) -> Callable[[Body], Body]:
    """Decorator adding an architecture body under `name`."""

    def deco(fn: Body) -> Body:
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def regularizer(cfg: ModelConfig) -> keras.regularizers.Regularizer | None:
    """keras l2(lambda) adds exactly lambda * sum(w**2) to model.losses."""
    return keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None


def build_model(
    cfg: ModelConfig,
    input_shape: tuple[int, int, int],
    num_classes: int,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> keras.Model:
    """Build `cfg.name` inside the common frame (image -> normalize -> body -> logits)."""
    if cfg.name not in _REGISTRY:
        raise ConfigError(f"model.name = {cfg.name!r} is not a registered model; choose one of {', '.join(available())}")
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    channels = input_shape[-1]
    mean_a = np.asarray(mean if mean is not None else [127.5] * channels, dtype="float32")
    std_a = np.asarray(std if std is not None else [127.5] * channels, dtype="float32")
    if mean_a.shape != (channels,) or std_a.shape != (channels,):
        raise ConfigError(f"mean/std must have one value per channel ({channels}), got {mean_a.shape} and {std_a.shape}")
    inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="image")
    x = keras.layers.Normalization(mean=mean_a, variance=np.maximum(std_a, 1e-6) ** 2, name="normalize")(inputs)
    x = _REGISTRY[cfg.name](x, cfg)
    logits = keras.layers.Dense(
        num_classes, kernel_regularizer=regularizer(cfg), dtype="float32", name="logits"
    )(x)
    return keras.Model(inputs, logits, name=cfg.name)
