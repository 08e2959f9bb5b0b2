"""`from_arrays`: in-memory uint8 images and integer labels -> DataBundle; every source ends here.

Each registered source (:mod:`tfcnn.data.sources`) only reads its files into arrays; this module
is the one place that validates them (:mod:`tfcnn.data.arrays`), holds out a test split when the
source has none, applies ``data.image_size`` / ``data.channels`` and records what it decided in
``DataInfo.notes``, so the sources cannot drift apart.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tfcnn.config import DataConfig
from tfcnn.data import tfds_source
from tfcnn.data.arrays import as_labels, as_nhwc, check_classes, check_labels, conform
from tfcnn.data.bundle import DataBundle, make_bundle, stratified_split, stratified_subset
from tfcnn.data.images import RESIZE_METHOD
from tfcnn.errors import DataError

Split = tuple[np.ndarray, np.ndarray]


def from_arrays(
    cfg: DataConfig,
    train: Split,
    test: Split | None,
    class_names: Sequence[str] | None = None,
    *,
    source: str = "arrays",
    skipped: list[dict[str, str]] | None = None,
    notes: list[str] | None = None,
) -> DataBundle:
    """Bundle in-memory data: x uint8 NHW/NHWC, y integer class ids; `test` None holds out
    ``cfg.test_fraction`` (stratified, seeded); `class_names` None names classes "0".."K-1"."""
    notes = list(notes or [])
    x_train = as_nhwc(train[0], f"{source}: x_train")
    y_train = as_labels(train[1], len(x_train), f"{source}: y_train")
    if test is None:
        keep, held = stratified_split(y_train, cfg.test_fraction, cfg.seed)
        x_test, y_test = x_train[held], y_train[held]
        x_train, y_train = x_train[keep], y_train[keep]
        notes.append(f"no test split in the source: held out {len(y_test)} images (data.test_fraction = {cfg.test_fraction})")
    else:
        x_test = as_nhwc(test[0], f"{source}: x_test")
        y_test = as_labels(test[1], len(x_test), f"{source}: y_test")
    if class_names is None:
        top = max(int(y_train.max(initial=-1)), int(y_test.max(initial=-1)))
        class_names = [str(i) for i in range(top + 1)]
    class_names = [str(n) for n in class_names]
    check_labels(y_train, len(class_names), f"{source}: y_train")
    check_labels(y_test, len(class_names), f"{source}: y_test")
    check_classes(class_names, y_train, source)
    if len(y_test) == 0:
        raise DataError(f"{source}: the test split is empty; give test images or raise data.test_fraction")

    # Subset before converting so a 2,000-image run does not resize all 60,000 (make_bundle's own
    # subsetting then keeps everything: same seed, same stratified choice).
    for_train = stratified_subset(y_train, cfg.train_subset, cfg.seed)
    if len(for_train) < len(y_train):
        x_train, y_train = x_train[for_train], y_train[for_train]
    for_test = stratified_subset(y_test, cfg.test_subset, cfg.seed)
    if len(for_test) < len(y_test):
        x_test, y_test = x_test[for_test], y_test[for_test]

    size = tuple(cfg.image_size) if cfg.image_size else None
    if size is None and x_train.shape[1:3] != x_test.shape[1:3]:
        raise DataError(
            f"{source}: train images are {x_train.shape[1]}x{x_train.shape[2]} but test images are "
            f"{x_test.shape[1]}x{x_test.shape[2]}; set data.image_size = [height, width] to resize both"
        )
    channels = cfg.channels
    if channels is None and x_train.shape[-1] != x_test.shape[-1]:
        channels = 3
        notes.append("train and test differ in channels: grey images replicated to RGB (set data.channels)")
    for name, x in (("train", x_train), ("test", x_test)):
        if size is not None and tuple(x.shape[1:3]) != size:
            notes.append(f"{name} images resized from {x.shape[1]}x{x.shape[2]} to {size[0]}x{size[1]} ({RESIZE_METHOD})")
        if channels is not None and x.shape[-1] != channels:
            how = "grey replicated to RGB" if channels == 3 else "RGB to grey with BT.601 luma"
            notes.append(f"{name} images converted from {x.shape[-1]} to {channels} channels ({how})")
    x_train = conform(x_train, size, channels, label="train images")
    x_test = conform(x_test, size, channels, label="test images")
    return make_bundle(cfg, (x_train, y_train), (x_test, y_test), class_names, source, skipped=skipped, notes=notes)


def from_tfds_dict(cfg: DataConfig, d: dict) -> DataBundle:
    """Bundle what :func:`tfcnn.data.tfds_source.load_tfds` returned, bringing variable-size
    images to one size first (``data.image_size``, else the most common size)."""
    notes: list[str] = []
    size = tuple(cfg.image_size) if cfg.image_size else None
    splits = {}
    for key in ("train", "test"):
        part = d.get(key)
        if part is not None and isinstance(part[0], list):  # variable-size images
            stack, size, resized = tfds_source.to_one_size(part[0], size)
            if resized:
                notes.append(f"{resized} {key} images resized to {size[0]}x{size[1]} ({RESIZE_METHOD})")
            part = (stack, part[1])
        splits[key] = part
    return from_arrays(cfg, splits["train"], splits["test"], d["class_names"], source=d["source"], notes=notes)
