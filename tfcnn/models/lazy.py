"""``keras`` imported on first use, for the builder modules of this package.

Registering a builder only records its name and declared ``model.options``, and the "model"
check of :func:`tfcnn.config.validate` only reads those, so ``import tfcnn.models`` must not
pay for TensorFlow. The builders write ``keras.layers.Conv2D`` as usual; the first attribute
looked up on this stand-in imports the real module (later lookups are a dictionary read).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


class LazyModule:
    """Stands in for a module until an attribute is needed, then forwards to the real one."""

    def __init__(self, name: str):
        self.__dict__["_lazy_name"] = name
        self.__dict__["_lazy_module"] = None

    def _load(self) -> Any:
        module = self.__dict__["_lazy_module"]
        if module is None:
            module = importlib.import_module(self.__dict__["_lazy_name"])
            self.__dict__["_lazy_module"] = module
        return module

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        state = "loaded" if self.__dict__["_lazy_module"] is not None else "not loaded yet"
        return f"<lazy module {self.__dict__['_lazy_name']!r} ({state})>"


if TYPE_CHECKING:
    import keras
else:
    keras = LazyModule("keras")

__all__ = ["LazyModule", "keras"]
