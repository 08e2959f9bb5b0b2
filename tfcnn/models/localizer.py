"""localizer: single-object localisation (classification + one box) on any registered classifier.

The simplest detector, and the baseline the one-stage detector is measured against: when an
image holds at most one object, no anchors or non-maximum suppression are needed; a box
regressed straight from the globally pooled features is enough (the "classification +
localisation" setting of ImageNet ILSVRC / Overfeat). Why this form:

* the backbone is the same as :mod:`tfcnn.models.retinanet`'s (``options.backbone`` and its
  ``backbone_options``), its deepest feature map found by the same graph walk, so both detector
  kinds compare on equal features;
* the box goes through a sigmoid, so (ymin, xmin, ymax, xmax) is always inside the image
  (normalised [0, 1] coordinates, the data layer's) and the box loss never sees wild values;
* K class logits plus one final "no object" logit form one softmax, so an empty image is a class
  of its own rather than a low-confidence guess, and the task can skip the box loss for it.

Output: one float32 tensor ``localization`` ``[B, 4 + K + 1]``; ``cfg.dropout`` applies after
pooling.
"""

from __future__ import annotations

from typing import Any

from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError
from tfcnn.models.lazy import keras
from tfcnn.models.registry import get_builder, register, regularizer
from tfcnn.models.retinanet import (
    BACKBONE_OPTIONS,
    backbone_config,
    backbone_normalization,
    check_backbone,
    feature_maps,
    load_backbone_weights,
)

NAME = "localizer"
OPTIONS = {**BACKBONE_OPTIONS, "pooling": "flatten", "hidden": 128}
POOLINGS = ("flatten", "gap")


def deepest_map(x: Any, cfg: ModelConfig) -> Any:
    """The backbone body built on `x`, and its last full-graph feature map (before its pooling)."""
    bcfg = backbone_config(cfg)
    maps = [m for m in feature_maps(x, get_builder(bcfg.name).body(x, bcfg)) if m is not x]
    if not maps:
        raise ConfigError(f"model.options.backbone = {bcfg.name!r} gives no feature map; choose a convolutional classifier")
    return maps[-1]


@register(NAME, options=OPTIONS, head=False, takes_classes=True, check=check_backbone,
          normalization=backbone_normalization, load_weights=load_backbone_weights)
def localizer(x: Any, cfg: ModelConfig, num_classes: int) -> Any:
    """backbone -> flatten (or global average pooling) -> hidden dense (+ dropout) -> sigmoid box
    and K + 1 logits -> ``localization``.

    Flatten is the default because *where* the object is lives in the feature map's layout, which
    average pooling throws away: with GAP the box head only sees what is present, and on shapes
    scenes it regressed every box to the image centre (mAP 0 after 6 epochs)."""
    pooling = cfg.options.get("pooling", "flatten")
    if pooling not in POOLINGS:
        raise ConfigError(f"model.options.pooling = {pooling!r}; choose one of {', '.join(POOLINGS)}")
    hidden = int(cfg.options.get("hidden", 128))
    if hidden < 0:
        raise ConfigError(f"model.options.hidden = {hidden} must be >= 0 (0: no hidden layer)")
    fmap = deepest_map(x, cfg)
    x = keras.layers.Flatten(name="flatten")(fmap) if pooling == "flatten" else keras.layers.GlobalAveragePooling2D(name="gap")(fmap)
    if hidden:
        x = keras.layers.Dense(hidden, activation=cfg.activation, kernel_regularizer=regularizer(cfg), name="hidden")(x)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name="dropout")(x)
    box = keras.layers.Dense(4, activation="sigmoid", kernel_regularizer=regularizer(cfg), dtype="float32", name="box")(x)
    logits = keras.layers.Dense(num_classes + 1, kernel_regularizer=regularizer(cfg), dtype="float32", name="class_logits")(x)
    return keras.layers.Concatenate(axis=-1, dtype="float32", name="localization")([box, logits])


__all__ = ["OPTIONS", "deepest_map", "localizer"]
