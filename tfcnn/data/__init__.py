"""The data stage: any source -> validated uint8 arrays -> seeded train/val/test tf.data pipelines.

Sources (``data.source``) are registered in :mod:`tfcnn.data.sources`: ``fashion_mnist``,
``mnist``, ``idx:<dir>``, ``tfds:<name>``, ``folder:<dir>``, ``numpy:<file.npz>``; or
:func:`from_arrays` from Python. :func:`bundle_for` decodes a run's data once per process.

Importing the package registers the sources and the "data" check of
:func:`tfcnn.config.validate` only; the names below that need numpy, Pillow or TensorFlow are
imported on first use (PEP 562 module ``__getattr__``), so ``from tfcnn.data import load_data``
works as usual and ``import tfcnn.data`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tfcnn.data.info import DataInfo
from tfcnn.data.sources import SOURCES, Source, check_source, parse_source, register_source

# name -> module that defines it, imported when the name is first looked up
_LAZY = {
    "DataBundle": "tfcnn.data.bundle",
    "make_bundle": "tfcnn.data.bundle",
    "build_augmenter": "tfcnn.data.augment",
    "FASHION_MNIST_CLASSES": "tfcnn.data.builtin",
    "RESIZE_METHOD": "tfcnn.data.images",
    "load_image": "tfcnn.data.images",
    "from_arrays": "tfcnn.data.inmemory",
    "load_data": "tfcnn.data.load",
    "bundle_for": "tfcnn.data.load",
}

if TYPE_CHECKING:
    from tfcnn.data.augment import build_augmenter
    from tfcnn.data.builtin import FASHION_MNIST_CLASSES
    from tfcnn.data.bundle import DataBundle, make_bundle
    from tfcnn.data.images import RESIZE_METHOD, load_image
    from tfcnn.data.inmemory import from_arrays
    from tfcnn.data.load import bundle_for, load_data


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "DataBundle",
    "DataInfo",
    "FASHION_MNIST_CLASSES",
    "RESIZE_METHOD",
    "SOURCES",
    "Source",
    "build_augmenter",
    "bundle_for",
    "check_source",
    "from_arrays",
    "load_data",
    "load_image",
    "make_bundle",
    "parse_source",
    "register_source",
]
