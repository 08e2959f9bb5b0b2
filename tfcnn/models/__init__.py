"""Keras functional CNN builders, registered by name (see :mod:`tfcnn.models.registry`)."""

from tfcnn.models import compact, mobilenet, resnet, seed, tiny, vgg  # noqa: F401  (register the builders)
from tfcnn.models.registry import available, build_model, option_defaults, register, resolve

__all__ = ["available", "build_model", "option_defaults", "register", "resolve"]
