"""The data stage: any source -> validated uint8 arrays -> seeded train/val/test tf.data pipelines.

Sources (``data.source``): ``fashion_mnist``, ``mnist``, ``idx:<dir>``, ``tfds:<name>``,
``folder:<dir>``, ``numpy:<file.npz>``; or :func:`from_arrays` from Python.
"""

from tfcnn.data.augment import build_augmenter
from tfcnn.data.builtin import FASHION_MNIST_CLASSES
from tfcnn.data.bundle import DataBundle, make_bundle
from tfcnn.data.images import RESIZE_METHOD, load_image
from tfcnn.data.info import DataInfo
from tfcnn.data.load import from_arrays, load_data

__all__ = [
    "DataBundle",
    "DataInfo",
    "FASHION_MNIST_CLASSES",
    "RESIZE_METHOD",
    "build_augmenter",
    "from_arrays",
    "load_data",
    "load_image",
    "make_bundle",
]
