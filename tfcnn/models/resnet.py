"""CIFAR-style ResNet (He et al. 2016, section 4.2): a 3x3 stem, then stages of residual blocks
that double the channels and halve the resolution, then global average pooling.

``model.block = "basic"`` stacks two 3x3 convs per block (depth = 2*stages*n + 2, i.e. 6n+2 with
three stages: 20, 32, 44, 56, 110); ``"bottleneck"`` uses 1x1 reduce -> 3x3 -> 1x1 expand
(depth = 3*stages*n + 2: 29, 47, ...). Shortcuts are identities unless the shape changes, where a
strided 1x1 projection (+BN) matches it ("option B" of the paper).
"""

from __future__ import annotations

from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError
from tfcnn.models.blocks import act, bn, check_pool, conv, conv_bn_act, head, positive_int, scaled, squeeze_excite
from tfcnn.models.lazy import keras
from tfcnn.models.registry import register

OPTIONS = {"base_filters": 16, "stages": 3, "expansion": 4, "se_ratio": 0.25}


def blocks_per_stage(depth: int, block: str, stages: int) -> int:
    """n for depth = layers_per_block * stages * n + 2; depth 0 means n = 3 (ResNet-20 / -29)."""
    per_block = 2 if block == "basic" else 3
    if depth == 0:
        return 3
    n, rem = divmod(depth - 2, per_block * stages)
    if depth < 2 or rem or n < 1:
        valid = ", ".join(str(per_block * stages * k + 2) for k in range(1, 6))
        raise ConfigError(
            f"model.depth = {depth} does not fit a {block}-block ResNet with {stages} stages; "
            f"use {per_block * stages}n+2: {valid}, ..."
        )
    return n


def _shortcut(x: keras.KerasTensor, filters: int, strides: int, cfg: ModelConfig, name: str) -> keras.KerasTensor:
    if strides == 1 and x.shape[-1] == filters:
        return x
    s = conv(x, filters, 1, cfg, f"{name}_proj_conv", strides=strides)
    return bn(s, cfg, f"{name}_proj_bn")


def basic_block(x: keras.KerasTensor, filters: int, strides: int, cfg: ModelConfig, name: str) -> keras.KerasTensor:
    shortcut = _shortcut(x, filters, strides, cfg, name)
    y = conv_bn_act(x, filters, 3, cfg, f"{name}_1", strides=strides)
    y = conv_bn_act(y, filters, 3, cfg, f"{name}_2", activation=False)
    if cfg.se:
        y = squeeze_excite(y, cfg, f"{name}_se", float(cfg.options["se_ratio"]))
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return act(y, cfg, f"{name}_out")


def bottleneck_block(
    x: keras.KerasTensor, filters: int, strides: int, cfg: ModelConfig, name: str, expansion: int
) -> keras.KerasTensor:
    out = filters * expansion
    shortcut = _shortcut(x, out, strides, cfg, name)
    y = conv_bn_act(x, filters, 1, cfg, f"{name}_1")
    y = conv_bn_act(y, filters, 3, cfg, f"{name}_2", strides=strides)
    y = conv_bn_act(y, out, 1, cfg, f"{name}_3", activation=False)
    if cfg.se:
        y = squeeze_excite(y, cfg, f"{name}_se", float(cfg.options["se_ratio"]))
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return act(y, cfg, f"{name}_out")


@register("resnet", options=OPTIONS)
def resnet(x: keras.KerasTensor, cfg: ModelConfig) -> keras.KerasTensor:
    stages = positive_int(cfg.options["stages"], "model.options.stages")
    base = positive_int(cfg.options["base_filters"], "model.options.base_filters")
    expansion = positive_int(cfg.options["expansion"], "model.options.expansion")
    n = blocks_per_stage(cfg.depth, cfg.block, stages)
    x = conv_bn_act(x, scaled(base, cfg.width), 3, cfg, "stem")
    for stage in range(stages):
        filters = scaled(base * 2**stage, cfg.width)
        for i in range(n):
            strides = 2 if stage > 0 and i == 0 else 1
            if strides == 2:
                check_pool(x, "resnet", f"stage {stage + 1}")
            name = f"stage{stage + 1}_block{i + 1}"
            if cfg.block == "basic":
                x = basic_block(x, filters, strides, cfg, name)
            else:
                x = bottleneck_block(x, filters, strides, cfg, name, expansion)
    return head(x, cfg)
