"""Keras functional CNN builders, registered by name (see :mod:`tfcnn.models.registry`)."""

from tfcnn.models import tiny  # noqa: F401  (registers tiny_cnn)
from tfcnn.models.registry import available, build_model, register

__all__ = ["available", "build_model", "register"]
