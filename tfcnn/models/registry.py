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
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from tfcnn import config as config_mod
from tfcnn.config import ModelConfig, PipelineConfig
from tfcnn.errors import ConfigError
from tfcnn.models import warm_start
from tfcnn.models.lazy import keras
from tfcnn.util import Registry, log


class Body(Protocol):
    def __call__(self, x: keras.KerasTensor, cfg: ModelConfig) -> keras.KerasTensor: ...


# A fixed pixel normalisation: (mean, std) per RGB channel, in pixel units. A Builder may instead
# hold a function of the resolved config giving one or None (a detector takes its backbone's).
Normalization = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class Builder:
    """One registered architecture: its body and the ``model.options`` it accepts (name -> default)."""

    name: str
    body: Body
    options: dict[str, Any]
    # False: the body returns the model's output itself (autoencoders: an image), so no
    # classifier head is added and the model needs no class count.
    head: bool = True
    # A pretrained body's own pixel normalisation ((mean, std) per RGB channel, pixel units): the
    # frame's `normalize` layer then holds these instead of the training split's, so the export
    # contract (read from that layer) stays true. None: the training split's statistics.
    normalization: Normalization | Callable[[ModelConfig], Normalization | None] | None = None
    # Called with the finished model (head included) to fill its pretrained weights.
    load_weights: Callable[[Any, ModelConfig], None] | None = None
    # True (with head=False): the body needs the class count, ``body(x, cfg, num_classes)``, and
    # ends the model itself (the detectors: their output holds per-class logits).
    takes_classes: bool = False
    # Called by resolve_options with the merged config, for checks the option kinds cannot express
    # (a detector's backbone name and backbone_options); raises ConfigError. Builds nothing.
    check: Callable[[ModelConfig], None] | None = None


MODELS: Registry = Registry("model", "model.name")


def register(
    name: str,
    options: Mapping[str, Any] | None = None,
    *,
    head: bool = True,
    normalization: Normalization | Callable[[ModelConfig], Normalization | None] | None = None,
    load_weights: Callable[[Any, ModelConfig], None] | None = None,
    takes_classes: bool = False,
    check: Callable[[ModelConfig], None] | None = None,
) -> Callable[[Body], Body]:
    """Decorator adding an architecture body under `name` (a taken name is refused).

    `options` maps every accepted ``model.options`` key to its default; the body then sees
    ``cfg.options`` with all of them filled in and type-checked. The defaults are the type
    declaration too: a value must be of the default's kind (bool, int, number, string, list
    with elements like the default's, or a dict), so the check needs no layer built.
    ``takes_classes`` (with ``head=False``): the body is called as ``body(x, cfg, num_classes)``;
    ``check`` runs on the merged options for what their kinds cannot say.
    """
    if takes_classes and head:
        raise ValueError(f"{name}: takes_classes is for builders that end the model themselves (head=False)")

    def deco(fn: Body) -> Body:
        MODELS.register(
            name, Builder(name, fn, dict(options or {}), head, normalization, load_weights, takes_classes, check)
        )
        return fn

    return deco


def available() -> list[str]:
    return sorted(MODELS)


def get_builder(name: str) -> Builder:
    """The registered builder; an unknown name is one ConfigError line with a did-you-mean."""
    return MODELS.get_or_raise(name)


def option_defaults(name: str) -> dict[str, Any]:
    """The ``model.options`` a registered model accepts, with their defaults."""
    return dict(get_builder(name).options)


def regularizer(cfg: ModelConfig) -> keras.regularizers.Regularizer | None:
    """keras l2(lambda) adds exactly lambda * sum(w**2) to model.losses."""
    return keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None


def _kind_error(value: Any, default: Any) -> str | None:
    """What is wrong with `value` for an option whose default is `default` (None: nothing).

    The default's kind is the declaration: bool, integer, number (finite), string, or a list
    whose entries are each like the default's first entry.
    """
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"{value!r} is not true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else f"{value!r} is not an integer"
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{value!r} is not a number"
        return None if math.isfinite(value) else f"{value!r} is not a finite number"
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            return f"{value!r} is not a list"
        if default:
            for item in value:
                why = _kind_error(item, default[0])
                if why is not None:
                    return f"entry {why}"
        return None
    return None if isinstance(value, type(default)) else f"{value!r} is not a {type(default).__name__}"


def resolve_options(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with its builder's option defaults filled in, after checking the name and every
    ``model.options`` key and kind. Needs no TensorFlow (the "model" check of validate)."""
    builder = get_builder(cfg.name)
    defaults = builder.options
    merged = dict(defaults)
    for key, value in (cfg.options or {}).items():
        if key not in defaults:
            allowed = ", ".join(sorted(defaults)) or "none"
            raise ConfigError(f"model.options.{key} is not an option of {cfg.name}; allowed options: {allowed}")
        why = _kind_error(value, defaults[key])
        if why is not None:
            raise ConfigError(
                f"model.options.{key} = {value!r} has the wrong type for {cfg.name}: {why}; "
                f"expected something like {defaults[key]!r}"
            )
        merged[key] = value
    resolved = dataclasses.replace(cfg, options=merged)
    if builder.check is not None:
        builder.check(resolved)
    return resolved


def resolve(cfg: ModelConfig) -> ModelConfig:
    """Validate `cfg` against its builder (name, options, activation) and fill option defaults.

    Builds nothing, so callers can run it before loading data; the activation is looked up in
    Keras (this imports TensorFlow).
    """
    cfg = resolve_options(cfg)
    try:
        keras.activations.get(cfg.activation)
    except (ValueError, TypeError):
        raise ConfigError(
            f"model.activation = {cfg.activation!r} is not a Keras activation; use e.g. 'relu', 'relu6', 'silu', 'gelu', 'hard_silu'"
        ) from None
    return cfg


def check_config(cfg: PipelineConfig) -> None:
    """The "model" check of :func:`tfcnn.config.validate`: model.name, model.options, model.activation."""
    resolve(cfg.model)


config_mod.register_check("model", check_config)


def build_model(
    cfg: ModelConfig,
    input_shape: tuple[int, int, int],
    num_classes: int,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> keras.Model:
    """Build `cfg.name` inside the common frame (image -> normalize -> body -> logits); a builder
    registered with ``head=False`` (the autoencoders) ends the model itself, and needs no classes;
    one that also ``takes_classes`` (the detectors) ends it too, given ``num_classes`` (>= 1)."""
    import numpy as np

    cfg = resolve(cfg)
    builder = get_builder(cfg.name)
    if builder.head and num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    if builder.takes_classes and num_classes < 1:
        raise ConfigError(f"{cfg.name} needs at least 1 object class, got {num_classes}")
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(f"input_shape must be (height, width, channels), got {tuple(input_shape)}")
    channels = input_shape[-1]
    fixed = builder.normalization(cfg) if callable(builder.normalization) else builder.normalization
    if cfg.init_from:  # the features to start from were learned on that classifier's statistics
        fixed = warm_start.classifier_normalization(cfg.init_from, "model.init_from")
    if fixed is not None:
        mean, std = (_fixed_stats(v, channels, cfg.name) for v in fixed)
    mean_a = np.asarray(mean if mean is not None else [127.5] * channels, dtype="float32")
    std_a = np.asarray(std if std is not None else [127.5] * channels, dtype="float32")
    if mean_a.shape != (channels,) or std_a.shape != (channels,):
        raise ConfigError(f"mean/std must have one value per channel ({channels}), got {mean_a.shape} and {std_a.shape}")
    inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="image")
    x = keras.layers.Normalization(mean=mean_a, variance=np.maximum(std_a, 1e-6) ** 2, name="normalize")(inputs)
    if builder.takes_classes:
        x = builder.body(x, cfg, num_classes)  # type: ignore[call-arg]
    else:
        x = builder.body(x, cfg)
    if not builder.head:
        model = keras.Model(inputs, x, name=cfg.name)
        if builder.load_weights is not None:
            builder.load_weights(model, cfg)
        return model
    logits = keras.layers.Dense(
        num_classes, kernel_regularizer=regularizer(cfg), dtype="float32", name="logits"
    )(x)
    model = keras.Model(inputs, logits, name=cfg.name)
    if builder.load_weights is not None:
        builder.load_weights(model, cfg)
    if cfg.init_from:
        _warm_start(model, cfg)
    return model


def _warm_start(model: keras.Model, cfg: ModelConfig) -> None:
    """``model.init_from``: the namesake layers of a classifier tfcnn trained (not its logits)."""
    copied = warm_start.copy_layers(model, cfg.init_from, "model.init_from", hint="give the model the classifier's own model settings")
    if not copied:
        raise ConfigError(f"model.init_from = {cfg.init_from!r} shares no layer with this {cfg.name}; give a model.keras of the same architecture")
    log.info("model: %s starts from %s (%d of its layers; logits new)", cfg.name, cfg.init_from, len(copied))


def _fixed_stats(values: tuple[float, ...], channels: int, name: str) -> list[float]:
    """A pretrained builder's per-RGB-channel statistic for `channels` input channels: a
    grayscale input can only take one that is the same for all three channels."""
    if channels == len(values):
        return list(values)
    if channels == 1 and len(set(values)) == 1:
        return [values[0]]
    raise ConfigError(f"{name} takes RGB images ({len(values)} channels), got {channels}; set data.channels = 3")
