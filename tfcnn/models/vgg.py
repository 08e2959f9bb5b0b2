"""VGG-style network (Simonyan & Zisserman 2014): blocks of stacked 3x3 convs, each block
followed by 2x2 max pooling, channels doubling per block.

Two stacked 3x3 convs see a 5x5 window (three see 7x7) with fewer weights and more
non-linearities than one big kernel. ``model.depth`` (> 0) sets the convs per block; the head is
global average pooling by default (``options.head = "dense"`` restores VGG's Flatten + Dense
layers, which is where VGG16 keeps most of its 138M weights).
"""

from __future__ import annotations

from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError
from tfcnn.models.blocks import act, check_pool, conv_bn_act, head, positive_int, scaled
from tfcnn.models.lazy import keras
from tfcnn.models.registry import register, regularizer

OPTIONS = {"blocks": 3, "convs_per_block": 2, "base_filters": 32, "max_filters": 512, "head": "gap", "dense_units": 256}


@register("vgg", options=OPTIONS)
def vgg(x: keras.KerasTensor, cfg: ModelConfig) -> keras.KerasTensor:
    blocks = positive_int(cfg.options["blocks"], "model.options.blocks")
    convs = cfg.depth or positive_int(cfg.options["convs_per_block"], "model.options.convs_per_block")
    base = positive_int(cfg.options["base_filters"], "model.options.base_filters")
    cap = positive_int(cfg.options["max_filters"], "model.options.max_filters")
    if cfg.options["head"] not in ("gap", "dense"):
        raise ConfigError(f"model.options.head = {cfg.options['head']!r}; choose 'gap' or 'dense'")
    for b in range(1, blocks + 1):
        filters = scaled(min(base * 2 ** (b - 1), cap), cfg.width)
        for i in range(1, convs + 1):
            x = conv_bn_act(x, filters, 3, cfg, f"block{b}_conv{i}")
        check_pool(x, "vgg", f"the pooling of block {b} (model.options.blocks = {blocks})")
        x = keras.layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
    if cfg.options["head"] == "gap":
        return head(x, cfg)
    x = keras.layers.Flatten(name="flatten")(x)
    units = scaled(positive_int(cfg.options["dense_units"], "model.options.dense_units"), cfg.width)
    for i in (1, 2):
        x = keras.layers.Dense(units, kernel_regularizer=regularizer(cfg), name=f"fc{i}")(x)
        x = act(x, cfg, f"fc{i}_act")
        if cfg.dropout > 0:
            x = keras.layers.Dropout(cfg.dropout, name=f"fc{i}_dropout")(x)
    return x
