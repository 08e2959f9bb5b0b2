"""MobileNet-style network for small images: depthwise-separable blocks (MobileNetV1) or
inverted residuals with linear bottlenecks (MobileNetV2), optional squeeze-and-excitation (V3).

A depthwise 3x3 conv filters each channel on its own and a 1x1 conv mixes channels, so a 3x3
c_in->c_out layer costs 9*c_in + c_in*c_out weights instead of 9*c_in*c_out. Inverted residuals
expand channels (x ``expansion``) for the depthwise step and project back linearly, with an
identity shortcut when shape allows.

``options.stages`` lists ``[filters, repeats, stride]`` per stage (the first uses expansion 1, as in
MobileNetV2); ``model.depth > 0`` overrides every stage's repeats. Channels scale with ``width``
and round to multiples of 8. The default stem uses stride 1, since 28x28/32x32 inputs have little
resolution to spare.
"""

from __future__ import annotations

from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError
from tfcnn.models.blocks import (
    bn,
    check_pool,
    conv,
    conv_bn_act,
    depthwise_bn_act,
    head,
    positive_int,
    scaled,
    squeeze_excite,
)
from tfcnn.models.lazy import keras
from tfcnn.models.registry import register

BLOCK_TYPES = ("inverted_residual", "separable")
OPTIONS = {
    "block_type": "inverted_residual",
    "expansion": 6,
    "stages": [[16, 1, 1], [24, 2, 2], [32, 3, 2], [64, 2, 2], [96, 1, 1]],
    "stem_filters": 32,
    "stem_strides": 1,
    "head_filters": 256,  # final 1x1 conv before pooling; 0 leaves it out
    "se_ratio": 0.25,
}


def _stages(value: object) -> list[tuple[int, int, int]]:
    key = "model.options.stages"
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{key} must be a list of [filters, repeats, stride] triples, got {value!r}")
    out = []
    for item in value:
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            raise ConfigError(f"{key} entry {item!r} must be [filters, repeats, stride]")
        f, n, s = (positive_int(v, key) for v in item)
        if s not in (1, 2):
            raise ConfigError(f"{key} entry {item!r}: stride must be 1 or 2")
        out.append((f, n, s))
    return out


def separable_block(x: keras.KerasTensor, filters: int, strides: int, cfg: ModelConfig, name: str) -> keras.KerasTensor:
    x = depthwise_bn_act(x, cfg, f"{name}_dw", strides=strides)
    if cfg.se:
        x = squeeze_excite(x, cfg, f"{name}_se", float(cfg.options["se_ratio"]))
    return conv_bn_act(x, filters, 1, cfg, f"{name}_pw")


def inverted_residual(
    x: keras.KerasTensor, filters: int, strides: int, expansion: int, cfg: ModelConfig, name: str
) -> keras.KerasTensor:
    c_in = x.shape[-1]
    y = x
    if expansion != 1:
        y = conv_bn_act(y, c_in * expansion, 1, cfg, f"{name}_expand")
    y = depthwise_bn_act(y, cfg, f"{name}_dw", strides=strides)
    if cfg.se:
        y = squeeze_excite(y, cfg, f"{name}_se", float(cfg.options["se_ratio"]))
    y = conv(y, filters, 1, cfg, f"{name}_project_conv")  # linear bottleneck: no activation
    y = bn(y, cfg, f"{name}_project_bn")
    if strides == 1 and c_in == filters:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


@register("mobilenet", options=OPTIONS)
def mobilenet(x: keras.KerasTensor, cfg: ModelConfig) -> keras.KerasTensor:
    block_type = cfg.options["block_type"]
    if block_type not in BLOCK_TYPES:
        raise ConfigError(f"model.options.block_type = {block_type!r}; choose one of {', '.join(BLOCK_TYPES)}")
    expansion = positive_int(cfg.options["expansion"], "model.options.expansion")
    stem_strides = positive_int(cfg.options["stem_strides"], "model.options.stem_strides")
    head_filters = cfg.options["head_filters"]
    if isinstance(head_filters, bool) or not isinstance(head_filters, int) or head_filters < 0:
        raise ConfigError(f"model.options.head_filters = {head_filters!r} must be an integer >= 0")
    stages = _stages(cfg.options["stages"])
    x = conv_bn_act(x, scaled(positive_int(cfg.options["stem_filters"], "model.options.stem_filters"), cfg.width, 8),
                    3, cfg, "stem", strides=stem_strides)
    for stage, (f, n, s) in enumerate(stages, start=1):
        filters = scaled(f, cfg.width, 8)
        for i in range(cfg.depth or n):
            strides = s if i == 0 else 1
            if strides == 2:
                check_pool(x, "mobilenet", f"stage {stage}")
            name = f"stage{stage}_block{i + 1}"
            if block_type == "separable":
                x = separable_block(x, filters, strides, cfg, name)
            else:
                x = inverted_residual(x, filters, strides, 1 if stage == 1 else expansion, cfg, name)
    if head_filters:
        x = conv_bn_act(x, scaled(head_filters, cfg.width, 8), 1, cfg, "head")
    return head(x, cfg)
