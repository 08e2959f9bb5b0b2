"""TensorFlow Datasets as a source: ``tfds:<name>`` (any image classification data set).

Downloads happen only when the data set is not prepared yet and the machine is online; offline,
tfds would retry for minutes before failing, so a quick connectivity probe turns that into an
immediate DataError.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from tfcnn.data.arrays import Progress, most_common_size
from tfcnn.data.images import conform_image
from tfcnn.errors import DataError

PROBE_HOST = ("storage.googleapis.com", 443)  # where TFDS keeps its prepared-data mirror


def online(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the TFDS mirror opens within `timeout` seconds (DNS included)."""

    def connect() -> bool:
        with socket.create_connection(PROBE_HOST, timeout=timeout):
            return True

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(connect).result(timeout=timeout + 1)
    except (OSError, FutureTimeout):
        return False
    finally:
        pool.shutdown(wait=False)


def load_tfds(name: str, data_dir: str | None = None) -> dict[str, Any]:
    """Arrays of a TFDS data set: {"train": (x, y), "test": (x, y) or None, "class_names", "source"}.

    Uses the "test" split, else "validation", else None (the caller holds out data.test_fraction).
    Images of varying size are returned as a list, for the caller to bring to one size.
    """
    builder = tfds_builder("tfds", name, data_dir)
    if not builder.is_prepared():
        if not online():
            raise DataError(
                f"tfds:{name} is not downloaded in {builder.data_dir} and this machine is offline; "
                "connect to the internet once (TFDS downloads it) or set data.path / $TFDS_DATA_DIR to a prepared copy"
            )
        try:
            builder.download_and_prepare()
        except Exception as exc:
            raise DataError(f"tfds:{name}: download failed ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None

    info = builder.info
    image_key, label_key = info.supervised_keys or ("image", "label")
    if not isinstance(image_key, str) or image_key not in info.features or label_key not in info.features:
        raise DataError(f"tfds:{name} has no (image, label) supervised keys; it is not an image classification set")
    label_feature = info.features[label_key]
    names = list(getattr(label_feature, "names", None) or [])
    if not names:
        raise DataError(f"tfds:{name}: label feature {label_key!r} is not a ClassLabel, so class names are unknown")

    splits = set(info.splits.keys())
    test_split = None
    if not splits or "test" in splits:  # unknown split list (mocked / not yet read): try "test"
        test_split = "test"
    elif "validation" in splits:
        test_split = "validation"
    if splits and "train" not in splits:
        raise DataError(f"tfds:{name} has no 'train' split (it has {sorted(splits)})")
    fixed = info.features[image_key].shape
    fixed_size = None not in tuple(fixed)[:2]

    out: dict[str, Any] = {"class_names": names, "source": f"tfds:{name} ({builder.data_dir})"}
    for key, split in (("train", "train"), ("test", test_split)):
        out[key] = None if split is None else _read_split(builder, split, image_key, label_key, fixed_size, name)
    return out


def _read_split(builder, split: str, image_key: str, label_key: str, fixed_size: bool, name: str):
    import tensorflow_datasets as tfds

    try:
        ds = builder.as_dataset(split=split, as_supervised=False)
    except Exception as exc:
        raise DataError(f"tfds:{name}: cannot read split {split!r} ({type(exc).__name__}: {exc})") from None
    ds = ds.map(lambda ex: (ex[image_key], ex[label_key]))
    if fixed_size:
        xs, ys = [], []
        for x, y in tfds.as_numpy(ds.batch(1024)):
            xs.append(x)
            ys.append(y)
        if not xs:
            raise DataError(f"tfds:{name}: split {split!r} is empty")
        return np.concatenate(xs), np.concatenate(ys)
    images, labels = [], []
    for x, y in tfds.as_numpy(ds):
        images.append(x)
        labels.append(y)
    return images, np.asarray(labels)


def to_one_size(images: list[np.ndarray], size: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int], int]:
    """Stack variable-size HWC images at `size` (default: the most common size) with the folder
    source's resize; returns (stack, size, how many were resized)."""
    target = tuple(size) if size is not None else most_common_size([im.shape[:2] for im in images])
    channels = images[0].shape[-1] if images[0].ndim == 3 else 1
    out = np.empty((len(images), *target, channels), dtype=np.uint8)
    bar = Progress(len(images), f"resizing {len(images)} images to {target[0]}x{target[1]}")
    resized = 0
    for i, im in enumerate(images):
        im = im if im.ndim == 3 else im[..., None]
        resized += tuple(im.shape[:2]) != target
        out[i] = conform_image(im, target, channels)
        bar.step(i + 1)
    return out, target, resized


def tfds_builder(kind: str, name: str, data_dir: str | None = None) -> Any:
    """``tfds.builder(name)``; tensorflow-datasets missing or an unknown name is one DataError
    line starting with the source (``kind:name``)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as exc:  # pragma: no cover - a broken install
        raise DataError(f"tensorflow-datasets is not importable ({exc}); pip install tensorflow-datasets") from None
    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as exc:  # DatasetNotFoundError and friends
        raise DataError(f"{kind}:{name}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def prepared_builder(kind: str, name: str, data_dir: str | None = None) -> Any:
    """The TFDS builder of a set that must already be prepared (``kind:name`` sources that never
    download implicitly: detection and segmentation sets are gigabytes). tensorflow-datasets
    missing, an unknown name, or a set not prepared in `data_dir` is one DataError line, the last
    saying how to prepare it."""
    builder = tfds_builder(kind, name, data_dir)
    if not builder.is_prepared():
        where = f" --data_dir={data_dir}" if data_dir else ""
        raise DataError(
            f"{kind}:{name} is not downloaded in {builder.data_dir}; prepare it once while online with "
            f"'tfds build {name}{where}' (or tfds.builder({name!r}).download_and_prepare()), then point data.path "
            "(or $TFDS_DATA_DIR) at that data directory"
        )
    return builder


def held_out_split(builder: Any) -> str | None:
    """"test", else "validation", else None (the caller holds out data.test_fraction)."""
    splits = set(builder.info.splits.keys())
    return "test" if "test" in splits else ("validation" if "validation" in splits else None)
