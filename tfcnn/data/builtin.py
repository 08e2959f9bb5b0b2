"""The named data sets ``fashion_mnist`` and ``mnist``: find local IDX files before downloading.

Resolution order (first that holds the four IDX files wins):
  1. ``data.path`` (explicit; wrong means an error, not a silent fallback),
  2. ``$TFCNN_DATA_DIR`` (itself, or its ``fashion-mnist`` / ``fashion_mnist`` / ``mnist`` sub-folder),
  3. the Debian package's directory (``apt-get install dataset-fashion-mnist``),
  4. TensorFlow Datasets (downloads when online, reuses a prepared copy offline).
"""

from __future__ import annotations

import os
from pathlib import Path

from tfcnn.data import idx
from tfcnn.errors import DataError

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(i) for i in range(10)]
CLASS_NAMES = {"fashion_mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES}
DEBIAN_DIRS = {
    "fashion_mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}
ENV_VAR = "TFCNN_DATA_DIR"
_SUBDIRS = {"fashion_mnist": ("fashion-mnist", "fashion_mnist"), "mnist": ("mnist",)}


def candidate_dirs(name: str, path: str | None) -> list[tuple[str, Path]]:
    """(where it came from, directory) in resolution order, before checking what they hold."""
    out: list[tuple[str, Path]] = []
    if path:
        out.append(("data.path", Path(path).expanduser()))
    env = os.environ.get(ENV_VAR)
    if env:
        base = Path(env).expanduser()
        out.append((f"${ENV_VAR}", base))
        out.extend((f"${ENV_VAR}", base / sub) for sub in _SUBDIRS[name])
    out.append(("Debian package", DEBIAN_DIRS[name]))
    return out


def resolve_idx_dir(name: str, path: str | None) -> tuple[Path | None, list[str]]:
    """The first candidate directory holding all four IDX files, and the places looked at."""
    tried = []
    for origin, d in candidate_dirs(name, path):
        if idx.has_idx(d):
            return d, tried
        if origin == "data.path":
            raise DataError(
                f"data.path = {str(d)!r} does not hold the {name} IDX files (train-images-idx3-ubyte[.gz], "
                "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])"
            )
        tried.append(f"{origin} {d}")
    return None, tried


def how_to_get(name: str) -> str:
    """The ways to make `name` available, for the error when none worked."""
    local = (
        "apt-get install dataset-fashion-mnist; "
        if name == "fashion_mnist"
        else "put the four MNIST IDX files in a directory; "
    )
    return (
        f"{local}or set ${ENV_VAR} or data.path to a directory holding the IDX files; "
        "or be online once so TensorFlow Datasets can download it"
    )


def locate(name: str, path: str | None, tfds_loader) -> tuple[str, object]:
    """('idx', directory) or ('tfds', loaded dict), following the resolution order.

    `tfds_loader(name)` is tried last; its DataError (offline, not prepared) becomes one error
    that lists every place looked at and the three ways to get the data.
    """
    directory, tried = resolve_idx_dir(name, path)
    if directory is not None:
        return "idx", directory
    try:
        return "tfds", tfds_loader(name)
    except DataError as exc:
        raise DataError(
            f"{name} not found (looked in {', '.join(tried)}; TFDS: {exc}). To get it: {how_to_get(name)}"
        ) from None
