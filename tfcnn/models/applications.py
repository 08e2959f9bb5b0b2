"""``keras.applications`` backbones as registered builders: MobileNetV2, MobileNetV3Small/Large,
EfficientNetB0 and ResNet50, with ``model.weights`` = "imagenet" | "<path>.weights.h5" | "none".

Each body is the application without its top (``include_top=False``), nested as one layer named
``backbone``, then the frame's pooling, dropout and ``logits``. What each network expects of its
pixels is put where tfcnn's frame keeps it, so the export contract stays "uint8 RGB in":

* MobileNetV2 / V3: [-1, 1], i.e. the frame's ``normalize`` with mean = std = 127.5 (V3's own
  rescaling is switched off so it is not applied twice);
* EfficientNetB0: raw 0..255 (mean 0, std 1); the application rescales and normalizes itself;
* ResNet50: "caffe" preprocessing, BGR minus the ImageNet mean: ``normalize`` subtracts the mean
  in RGB order and a fixed, non-trainable 1x1 convolution swaps R and B.

"imagenet" weights come from Keras' own download into ``~/.keras/models``; on a machine without
network access that fails, and the error is one line naming the other two choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError, TfcnnError
from tfcnn.models import pretrained
from tfcnn.models.blocks import classifier_head
from tfcnn.models.lazy import keras
from tfcnn.models.registry import register
from tfcnn.util import first_line, log

OPTIONS = {
    "input_size": 224,  # side the image is resized to inside the model; 0 keeps the data's size
    "classifier": "linear",  # the head before the logits: linear | mlp | adapter (blocks.classifier_head)
}
MINUS_ONE_TO_ONE = ((127.5,) * 3, (127.5,) * 3)
RAW = ((0.0,) * 3, (1.0,) * 3)
CAFFE = ((123.68, 116.779, 103.939), (1.0, 1.0, 1.0))  # RGB order; the body then swaps to BGR


@dataclass(frozen=True)
class Application:
    name: str
    constructor: str  # attribute of keras.applications
    normalization: tuple[tuple[float, ...], tuple[float, ...]]
    extra: tuple[tuple[str, Any], ...] = ()  # constructor keyword arguments
    bgr: bool = False


APPLICATIONS = (
    Application("mobilenet_v2", "MobileNetV2", MINUS_ONE_TO_ONE),
    Application("mobilenet_v3_small", "MobileNetV3Small", MINUS_ONE_TO_ONE, (("include_preprocessing", False),)),
    Application("mobilenet_v3_large", "MobileNetV3Large", MINUS_ONE_TO_ONE, (("include_preprocessing", False),)),
    Application("efficientnet_b0", "EfficientNetB0", RAW),
    Application("resnet50", "ResNet50", CAFFE, bgr=True),
)


def construct(app: Application, input_shape: tuple[int, ...], weights: str | None) -> Any:
    """The application without its top, for `input_shape`, with Keras' `weights` (None or "imagenet")."""
    return getattr(keras.applications, app.constructor)(
        include_top=False, weights=weights, input_shape=tuple(input_shape), **dict(app.extra)
    )


def _body_for(app: Application):
    def body(x: Any, cfg: ModelConfig) -> Any:
        size = cfg.options["input_size"]
        if size < 0 or 0 < size < 32:
            raise ConfigError(f"model.options.input_size = {size} must be 0 (keep the data's size) or a side >= 32, e.g. 224")
        if size and tuple(x.shape[1:3]) != (size, size):
            x = keras.layers.Resizing(size, size, interpolation="bilinear", name="resize")(x)
        if x.shape[-1] == 1:
            x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
        if app.bgr:
            import numpy as np

            swap = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)
            x = keras.layers.Conv2D(3, 1, use_bias=False, trainable=False, name="rgb_to_bgr",
                                    kernel_initializer=keras.initializers.Constant(swap))(x)
        backbone = construct(app, x.shape[1:], None)
        backbone.name = "backbone"
        return classifier_head(backbone(x), cfg, cfg.options["classifier"])

    body.__name__ = f"{app.name}_body"
    body.__doc__ = f"keras.applications.{app.constructor} (no top) in tfcnn's frame."
    return body


def _loader_for(app: Application):
    def load(model: Any, cfg: ModelConfig) -> None:
        choice = pretrained.weights_choice(cfg)
        if choice == "none":
            return
        backbone = model.get_layer("backbone")
        if choice != "imagenet":
            path = pretrained.resolve_file(cfg)
            pretrained.load_weights_file(backbone, path, f"the {app.constructor} backbone", "use model.weights = 'imagenet' or 'none'")
            log.info("model: %s backbone weights from %s", app.name, path)
            return
        try:
            source = construct(app, backbone.input_shape[1:], "imagenet")
        except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception for a failed download
            raise TfcnnError(
                f"model.weights = 'imagenet': Keras could not get the ImageNet weights of {app.constructor} "
                f"({first_line(exc, 300)}); put Keras' file in {Path.home() / '.keras' / 'models'}, "
                f"or set model.weights to a {pretrained.WEIGHTS_SUFFIX} path, or to 'none' for random initialisation"
            ) from None
        backbone.set_weights(source.get_weights())
        log.info("model: %s backbone from Keras' ImageNet weights", app.name)

    return load


for _app in APPLICATIONS:
    register(_app.name, options=OPTIONS, normalization=_app.normalization, load_weights=_loader_for(_app))(_body_for(_app))
    pretrained.register_source(pretrained.WeightsSource(
        name=_app.name,
        hint=f"Keras downloads them into {Path.home() / '.keras' / 'models'} when the network is reachable",
    ))
