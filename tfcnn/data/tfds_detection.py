"""TensorFlow Datasets detection sets as a source: ``tfds_detection:<name>`` (``voc/2007``, ``coco/2017``).

Why separate from :mod:`tfcnn.data.tfds_source`: detection sets have no (image, label)
supervised keys; their boxes are ``objects/bbox`` (already normalised ``ymin, xmin, ymax, xmax``,
the tfcnn order) and their classes ``objects/label``. These sets are gigabytes, so nothing is
ever downloaded implicitly: a set that is not prepared in the data directory is one DataError
saying how to prepare it (``download=False`` semantics, and no network is touched here).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tfcnn.data.boxes import pad_labels
from tfcnn.errors import DataError

KNOWN = ("voc/2007", "coco/2017")  # the sets this loader is written for (others with the same features work too)


def load_tfds_detection(name: str, data_dir: str | None = None, max_objects: int | None = None) -> dict[str, Any]:
    """{"train": (images list, labels [N, M, 5]), "test": (...) or None, "class_names", "source"}.

    Raises one DataError when tensorflow-datasets is missing, the name is unknown, or the set is
    not prepared in `data_dir` (default: TFDS's own, ``$TFDS_DATA_DIR`` or ~/tensorflow_datasets).
    """
    from tfcnn.data.tfds_source import prepared_builder, held_out_split

    builder = prepared_builder("tfds_detection", name, data_dir)
    features = builder.info.features
    if "objects" not in features or "image" not in features:
        raise DataError(f"tfds_detection:{name} has no 'image' and 'objects' features; it is not a detection set")
    names = list(getattr(features["objects"]["label"], "names", None) or [])
    test_split = held_out_split(builder)
    out: dict[str, Any] = {"class_names": names, "source": f"tfds_detection:{name} ({builder.data_dir})"}
    raw = {key: None if split is None else _read(builder, split) for key, split in (("train", "train"), ("test", test_split))}
    most = max((len(c) for part in raw.values() if part for c in part[2]), default=1)
    limit = max_objects or max(most, 1)  # one M for both splits
    if most > limit:
        raise DataError(
            f"tfds_detection:{name}: an image has {most} objects, more than data.max_objects = {limit}; "
            f"raise data.max_objects to {most}"
        )
    for key, part in raw.items():
        if part is not None:
            images, boxes, classes = part
            out[key] = (images, np.stack([pad_labels(np.clip(b, 0, 1), c, limit) for b, c in zip(boxes, classes)]))
        else:
            out[key] = None
    return out


def _read(builder, split: str) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    import tensorflow_datasets as tfds

    images, boxes, classes = [], [], []
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
        images.append(ex["image"])
        boxes.append(np.asarray(ex["objects"]["bbox"], np.float32).reshape(-1, 4))
        classes.append(np.asarray(ex["objects"]["label"]).reshape(-1))
    return images, boxes, classes
