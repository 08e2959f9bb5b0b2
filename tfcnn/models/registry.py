"""Name -> builder registry, and the common frame every architecture sits in.

Every tfcnn model has the same ends so later stages can rely on them: an ``image`` input taking
float32 pixel values in [0, 255] (NHWC), a ``normalize`` Normalization layer holding the training
split's per-channel mean/std, and a float32 ``logits`` Dense output (kept float32 under mixed
precision). Builders only write the body in between.

A builder declares the ``model.options`` it understands (name -> default) when it registers, so a
typo in a pipeline file fails before any layer is built instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol

import keras
import numpy as np

from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError


class Body(Protocol):
    def __call__(self, x: keras.KerasTensor, cfg: ModelConfig) -> keras.KerasTensor: ...


_REGISTRY: dict[str, Body] = {}
_OPTIONS: dict[str, dict[str, Any]] = {}


def register(name: str, options: Mapping[str, Any] | None = None) -> Callable[[Body], Body]:
    """Decorator adding an architecture body under `name`.

    `options` maps every accepted ``model.options`` key to its default; the body then sees
    ``cfg.options`` with all of them filled in and type-checked.
    """

    def deco(fn: Body) -> Body:
        _REGISTRY[name] = fn
        _OPTIONS[name] = dict(options or {})
        return fn

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def option_defaults(name: str) -> dict[str, Any]:
    """The ``model.options`` a registered model accepts, with their defaults."""
    _check_name(name)
    return dict(_OPTIONS[name])


def regularizer(cfg: ModelConfig) -> keras.regularizers.Regularizer | None:
    """keras l2(lambda) adds exactly lambda * sum(w**2) to model.losses."""
    return keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ConfigError(f"model.name = {name!r} is not a registered model; choose one of {', '.join(available())}")


def _same_kind(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def resolve(cfg: ModelConfig) -> ModelConfig:
    """Validate `cfg` against its builder (name, activation, options) and fill option defaults.

    Cheap (builds nothing), so callers can run it before loading data.
    """
    _check_name(cfg.name)
    try:
        keras.activations.get(cfg.activation)
    except (ValueError, TypeError):
        raise ConfigError(
            f"model.activation = {cfg.activation!r} is not a Keras activation; use e.g. 'relu', 'relu6', 'silu', 'gelu', 'hard_silu'"
        ) from None
    defaults = _OPTIONS[cfg.name]
    merged = dict(defaults)
    for key, value in (cfg.options or {}).items():
        if key not in defaults:
            allowed = ", ".join(sorted(defaults)) or "none"
            raise ConfigError(f"model.options.{key} is not an option of {cfg.name}; allowed options: {allowed}")
        if not _same_kind(value, defaults[key]):
            raise ConfigError(
                f"model.options.{key} = {value!r} has the wrong type for {cfg.name}; "
                f"expected something like {defaults[key]!r}"
            )
        merged[key] = value
    return dataclasses.replace(cfg, options=merged)


def build_model(
    cfg: ModelConfig,
    input_shape: tuple[int, int, int],
    num_classes: int,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> keras.Model:
    """Build `cfg.name` inside the common frame (image -> normalize -> body -> logits)."""
    cfg = resolve(cfg)
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(f"input_shape must be (height, width, channels), got {tuple(input_shape)}")
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
