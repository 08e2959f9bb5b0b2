"""Layer recipes shared by the architectures, so every conv/dense kernel gets the same L2,
BatchNorm and activation treatment from one ModelConfig.

Only stock Keras layers are used: models then save/reload as ``.keras`` and convert to
TFLite/CoreML without custom-object registration.
"""

from __future__ import annotations

from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError
from tfcnn.models.lazy import keras
from tfcnn.models.registry import regularizer


def scaled(channels: int, width: float, divisor: int = 1) -> int:
    """`channels * width`, rounded to a multiple of `divisor` (never below one `divisor`).

    The MobileNet rule: rounding down never loses more than 10% of the requested channels.
    """
    value = channels * width
    if divisor <= 1:
        return max(1, int(round(value)))
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def act(x: keras.KerasTensor, cfg: ModelConfig, name: str, activation: str | None = None) -> keras.KerasTensor:
    return keras.layers.Activation(activation or cfg.activation, name=name)(x)


def conv(
    x: keras.KerasTensor,
    filters: int,
    kernel: int,
    cfg: ModelConfig,
    name: str,
    *,
    strides: int = 1,
    use_bias: bool | None = None,
) -> keras.KerasTensor:
    """"same" Conv2D; the bias is dropped when BatchNorm follows (its beta does the same job)."""
    return keras.layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=(not cfg.batch_norm) if use_bias is None else use_bias,
        kernel_regularizer=regularizer(cfg),
        name=name,
    )(x)


def bn(x: keras.KerasTensor, cfg: ModelConfig, name: str) -> keras.KerasTensor:
    return keras.layers.BatchNormalization(name=name)(x) if cfg.batch_norm else x


def conv_bn_act(
    x: keras.KerasTensor,
    filters: int,
    kernel: int,
    cfg: ModelConfig,
    name: str,
    *,
    strides: int = 1,
    activation: bool | str = True,
) -> keras.KerasTensor:
    """conv -> BN (if cfg.batch_norm) -> activation; activation=False gives a linear output."""
    x = conv(x, filters, kernel, cfg, f"{name}_conv", strides=strides)
    x = bn(x, cfg, f"{name}_bn")
    if activation:
        x = act(x, cfg, f"{name}_act", activation if isinstance(activation, str) else None)
    return x


def depthwise_bn_act(
    x: keras.KerasTensor, cfg: ModelConfig, name: str, *, strides: int = 1, kernel: int = 3
) -> keras.KerasTensor:
    x = keras.layers.DepthwiseConv2D(
        kernel,
        strides=strides,
        padding="same",
        use_bias=not cfg.batch_norm,
        depthwise_regularizer=regularizer(cfg),
        name=f"{name}_dwconv",
    )(x)
    x = bn(x, cfg, f"{name}_bn")
    return act(x, cfg, f"{name}_act")


def squeeze_excite(x: keras.KerasTensor, cfg: ModelConfig, name: str, ratio: float = 0.25) -> keras.KerasTensor:
    """SE(x) = x * sigmoid(W2 relu(W1 GAP(x))) with a C*ratio bottleneck (Hu et al. 2018)."""
    channels = x.shape[-1]
    hidden = max(1, int(channels * ratio))
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = keras.layers.Dense(hidden, activation="relu", kernel_regularizer=regularizer(cfg), name=f"{name}_reduce")(s)
    s = keras.layers.Dense(channels, activation="sigmoid", kernel_regularizer=regularizer(cfg), name=f"{name}_expand")(s)
    return keras.layers.Multiply(name=f"{name}_scale")([x, s])


def head(x: keras.KerasTensor, cfg: ModelConfig) -> keras.KerasTensor:
    """Global average pooling (one value per channel, no parameters) then optional dropout."""
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name="dropout")(x)
    return x


CLASSIFIERS = ("linear", "mlp", "adapter")


def classifier_head(x: keras.KerasTensor, cfg: ModelConfig, kind: str = "linear") -> keras.KerasTensor:
    """The course's three transfer heads on a backbone's feature map (the ``logits`` Dense follows):

    * ``linear``: global average pooling, dropout (``model.dropout``): for small data close to
      the backbone's;
    * ``mlp``: pooling, then Dense 512 -> BN -> ReLU -> dropout -> Dense 256 -> BN -> ReLU ->
      dropout: for more data, or data further away;
    * ``adapter``: a 1x1 conv as wide as the feature map, BN, ReLU, then pooling and dropout: a
      learned channel mix that bridges a domain shift before the pooling.

    Fine-tuning (:mod:`tfcnn.train.finetune`) tells the head from the backbone by the pooling
    (the first layer without spatial axes) or the ``adapter`` name prefix.
    """
    if kind not in CLASSIFIERS:
        raise ConfigError(f"model.options.classifier = {kind!r}; choose one of {', '.join(CLASSIFIERS)}")
    if kind == "adapter":
        x = keras.layers.Conv2D(x.shape[-1], 1, use_bias=False, kernel_regularizer=regularizer(cfg), name="adapter_conv")(x)
        x = keras.layers.BatchNormalization(name="adapter_bn")(x)
        x = keras.layers.ReLU(name="adapter_relu")(x)
    if kind != "mlp":
        return head(x, cfg)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    for units in (512, 256):
        x = keras.layers.Dense(units, use_bias=False, kernel_regularizer=regularizer(cfg), name=f"head_dense{units}")(x)
        x = keras.layers.BatchNormalization(name=f"head_bn{units}")(x)
        x = keras.layers.ReLU(name=f"head_relu{units}")(x)
        if cfg.dropout > 0:
            x = keras.layers.Dropout(cfg.dropout, name=f"head_dropout{units}")(x)
    return x


def global_depthwise_head(x: keras.KerasTensor, cfg: ModelConfig) -> keras.KerasTensor:
    """A depthwise conv as large as the feature map: per-channel learned spatial pooling, then BN."""
    h, w = x.shape[1], x.shape[2]
    x = keras.layers.DepthwiseConv2D(
        (h, w), padding="valid", use_bias=not cfg.batch_norm, depthwise_regularizer=regularizer(cfg), name="gdconv"
    )(x)
    x = bn(x, cfg, "gdconv_bn")
    x = keras.layers.Flatten(name="gdconv_flatten")(x)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name="dropout")(x)
    return x


def check_pool(x: keras.KerasTensor, model: str, what: str) -> None:
    """Refuse to downsample a feature map that is already 1 pixel wide (input too small for the depth)."""
    h, w = x.shape[1], x.shape[2]
    if h is not None and w is not None and min(h, w) < 2:
        raise ConfigError(
            f"{model}: the feature map is already {h}x{w} before {what}; use larger images or fewer stages"
        )


def positive_int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} = {value!r} must be a positive integer")
    return value


def int_list(value: object, key: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{key} = {value!r} must be a non-empty list of positive integers")
    return [positive_int(v, key) for v in value]
