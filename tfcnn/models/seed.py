"""seed_cnn: the baseline two-conv CNN the project started from, in the tfcnn frame.

Conv32(3x3, same) -> MaxPool2 -> Conv64(3x3, same) -> MaxPool2 -> Flatten -> Dense128 -> logits:
421,642 parameters at 28x28x1 with 10 classes (320 + 18,496 + 401,536 + 1,290), pinned by
``tests/test_models.py::test_seed_cnn_has_the_course_parameter_count``.

The baseline has no BatchNorm, so ``model.batch_norm`` is ignored here: the parameter count
must stay 421,642 whatever the (BatchNorm-on) ModelConfig default says. A BatchNorm variant
is still one switch away: ``model.options = {batch_norm = true}``. ``width`` scales the three
hidden layers, ``dropout`` sits before the logits, ``activation`` and ``l2`` apply as usual.
"""

from __future__ import annotations

import dataclasses

from tfcnn.config import ModelConfig
from tfcnn.models.blocks import act, bn, positive_int, scaled
from tfcnn.models.lazy import keras
from tfcnn.models.registry import register, regularizer


@register("seed_cnn", options={"batch_norm": False, "hidden": 128})
def seed_cnn(x: keras.KerasTensor, cfg: ModelConfig) -> keras.KerasTensor:
    cfg = dataclasses.replace(cfg, batch_norm=bool(cfg.options["batch_norm"]))
    for i, filters in enumerate((32, 64), start=1):
        x = keras.layers.Conv2D(
            scaled(filters, cfg.width),
            3,
            padding="same",
            use_bias=not cfg.batch_norm,
            kernel_regularizer=regularizer(cfg),
            name=f"conv{i}",
        )(x)
        x = bn(x, cfg, f"bn{i}")
        x = act(x, cfg, f"act{i}")
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(
        scaled(positive_int(cfg.options["hidden"], "model.options.hidden"), cfg.width), kernel_regularizer=regularizer(cfg), name="dense1"
    )(x)
    x = act(x, cfg, "act3")
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name="dropout")(x)
    return x
