"""Keras functional CNN builders, registered by name (see :mod:`tfcnn.models.registry`).

Importing this package registers every builder and the "model" check of
:func:`tfcnn.config.validate` without importing TensorFlow: the builder modules reach Keras
through :mod:`tfcnn.models.lazy`, which loads it when the first layer is built.
"""

from tfcnn.models import compact, mobilenet, resnet, seed, tiny, vgg  # noqa: F401  (register the builders)
from tfcnn.models import autoencoders  # noqa: F401  (registers the reconstruction task's builders)
from tfcnn.models import applications, efficientnet_lite  # noqa: F401  (the pretrained builders)
from tfcnn.models import localizer, retinanet  # noqa: F401  (the detection task's builders)
from tfcnn.models import unet  # noqa: F401  (the segmentation task's builder)
from tfcnn.models.registry import (
    MODELS,
    Builder,
    available,
    build_model,
    get_builder,
    option_defaults,
    register,
    resolve,
    resolve_options,
)

__all__ = [
    "MODELS",
    "Builder",
    "available",
    "build_model",
    "get_builder",
    "option_defaults",
    "register",
    "resolve",
    "resolve_options",
]
