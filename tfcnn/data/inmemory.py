"""`from_arrays`: in-memory uint8 images and integer labels -> DataBundle; every source ends here.

Each registered source (:mod:`tfcnn.data.sources`) only reads its files into arrays; this module
is the one place that validates them (:mod:`tfcnn.data.arrays`), holds out a test split when the
source has none, applies ``data.image_size`` / ``data.channels`` and records what it decided in
``DataInfo.notes``, so the sources cannot drift apart. :func:`from_label_arrays` is its sibling
for detection boxes ``float32 [N, M, 5]`` and segmentation masks ``uint8 [N, H, W]``: the same
steps, with label checks of their own (classification's are about one class id per image) and
masks resized with NEAREST so class ids never blend.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from tfcnn.config import DataConfig
from tfcnn.data import tfds_source
from tfcnn.data.arrays import as_labels, as_nhwc, check_classes, check_labels, conform
from tfcnn.data.bundle import DataBundle, label_strata, make_bundle, select_classes, stratified_split, stratified_subset
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

    if cfg.classes is not None:  # before subsetting: data.train_subset counts images of the kept classes
        (x_train, y_train), (x_test, y_test), class_names = select_classes(cfg.classes, (x_train, y_train), (x_test, y_test), class_names)
        cfg = dataclasses.replace(cfg, classes=None)
    # Subset before converting so a 2,000-image run does not resize all 60,000 (make_bundle's own
    # subsetting then keeps everything: same seed, same stratified choice).
    for_train = stratified_subset(y_train, cfg.train_subset, cfg.seed)
    if len(for_train) < len(y_train):
        x_train, y_train = x_train[for_train], y_train[for_train]
    for_test = stratified_subset(y_test, cfg.test_subset, cfg.seed)
    if len(for_test) < len(y_test):
        x_test, y_test = x_test[for_test], y_test[for_test]

    size, channels = _size_and_channels(cfg, x_train, x_test, source, notes)
    x_train = conform(x_train, size, channels, label="train images")
    x_test = conform(x_test, size, channels, label="test images")
    return make_bundle(cfg, (x_train, y_train), (x_test, y_test), class_names, source, skipped=skipped, notes=notes)


def _size_and_channels(
    cfg: DataConfig, x_train: np.ndarray, x_test: np.ndarray, source: str, notes: list[str], *, masks: bool = False
) -> tuple[tuple[int, int] | None, int | None]:
    """The size and channel count both splits are brought to (``data.image_size`` /
    ``data.channels``, or what the splits force), each decision appended to ``notes``; splits of
    different sizes without ``data.image_size`` are one DataError line."""
    size = tuple(int(v) for v in cfg.image_size) if cfg.image_size else None
    if size is None and x_train.shape[1:3] != x_test.shape[1:3]:
        raise DataError(
            f"{source}: train images are {x_train.shape[1]}x{x_train.shape[2]} but test images are "
            f"{x_test.shape[1]}x{x_test.shape[2]}; set data.image_size = [height, width] to resize both"
        )
    channels = cfg.channels
    if channels is None and x_train.shape[-1] != x_test.shape[-1]:
        channels = 3
        notes.append("train and test differ in channels: grey images replicated to RGB (set data.channels)")
    also = " and masks (nearest)" if masks else ""
    for name, x in (("train", x_train), ("test", x_test)):
        if size is not None and tuple(x.shape[1:3]) != size:
            notes.append(f"{name} images{also} resized from {x.shape[1]}x{x.shape[2]} to {size[0]}x{size[1]} ({RESIZE_METHOD})")
        if channels is not None and x.shape[-1] != channels:
            how = "grey replicated to RGB" if channels == 3 else "RGB to grey with BT.601 luma"
            notes.append(f"{name} images converted from {x.shape[-1]} to {channels} channels ({how})")
    return size, channels  # type: ignore[return-value]


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


def check_box_labels(y: np.ndarray, n: int, num_classes: int, where: str) -> np.ndarray:
    """float32 [N, M, 5] padded box labels, else one DataError naming `where` and the first bad row."""
    y = np.asarray(y)
    if y.ndim != 3 or y.shape[-1] != 5:
        raise DataError(
            f"{where} has shape {tuple(y.shape)}; box labels must be (N, max_objects, 5) rows ymin, xmin, ymax, xmax, class id"
        )
    if y.dtype.kind != "f":
        raise DataError(f"{where} has dtype {y.dtype}; box labels must be float32 (normalised boxes, class id, PAD rows -1)")
    if len(y) != n:
        raise DataError(f"{where} has {len(y)} label arrays for {n} images; they must match one to one")
    y = y.astype(np.float32)
    if not np.isfinite(y).all():
        raise DataError(f"{where} contains NaN or infinite values; boxes must be finite")
    cls = y[..., 4]
    pad = cls < 0
    problems = [
        (pad & (y != -1.0).any(-1), "a padding row (class id < 0) must be all -1"),
        (~pad & (cls != np.round(cls)), "class ids must be whole numbers"),
        (~pad & (cls >= num_classes), f"class id outside [0, {num_classes}) for {num_classes} classes"),
        (~pad & ((y[..., :4] < 0) | (y[..., :4] > 1)).any(-1), "box coordinates must be normalised to [0, 1]"),
        (~pad & ((y[..., 0] > y[..., 2]) | (y[..., 1] > y[..., 3])), "a box needs ymin <= ymax and xmin <= xmax"),
    ]
    for bad, why in problems:
        if bad.any():
            i, j = (int(v) for v in np.argwhere(bad)[0])
            raise DataError(f"{where}: image {i} row {j} = {y[i, j].tolist()}: {why}")
    return y


def check_mask_labels(y: np.ndarray, images: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """uint8 [N, H, W] masks matching the images, values 0..num_classes, else one DataError."""
    y = np.asarray(y)
    if y.ndim == 4 and y.shape[-1] == 1:
        y = y[..., 0]
    if y.dtype != np.uint8:
        raise DataError(f"{where} has dtype {y.dtype}; masks must be uint8 (0 background, class id + 1)")
    if y.ndim != 3 or y.shape != images.shape[:3]:
        raise DataError(
            f"{where} has shape {tuple(y.shape)}; masks must be (N, H, W) = {tuple(images.shape[:3])} like the images"
        )
    top = int(y.max(initial=0))
    if top > num_classes:
        raise DataError(
            f"{where} contains mask value {top}, above {num_classes} for {num_classes} classes "
            "(0 is background, class id + 1 elsewhere); fix the masks or give the full list of class names"
        )
    return y


def _resize_masks(y: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    if not len(y):
        return np.zeros((0, h, w), np.uint8)
    return np.stack([np.asarray(Image.fromarray(m).resize((w, h), Image.Resampling.NEAREST), np.uint8) for m in y])


def from_label_arrays(
    cfg: DataConfig,
    train: Split,
    test: Split | None,
    class_names: Sequence[str],
    *,
    label_kind: str,
    source: str = "arrays",
    skipped: list[dict[str, str]] | None = None,
    notes: list[str] | None = None,
) -> DataBundle:
    """Bundle detection (`label_kind` "boxes": y float32 [N, M, 5]) or segmentation ("masks": y uint8
    [N, H, W]) data, x uint8 NHW/NHWC; `test` None holds out ``cfg.test_fraction``.

    Splits and subsets stratify by :func:`tfcnn.data.bundle.label_strata`; ``data.image_size``
    resizes images bilinearly and masks with NEAREST (boxes are normalised, so they need nothing);
    ``data.channels`` converts the images. `class_names` are the object classes (no background).
    """
    if label_kind not in ("boxes", "masks"):
        raise ValueError(f"from_label_arrays: label_kind must be 'boxes' or 'masks', got {label_kind!r}")
    notes = list(notes or [])
    class_names = [str(n) for n in class_names]
    if not class_names:
        raise DataError(f"{source}: no class names; detection / segmentation needs at least one object class")

    def checked(x: np.ndarray, y: np.ndarray, name: str) -> Split:
        x = as_nhwc(x, f"{source}: x_{name}")
        if label_kind == "boxes":
            return x, check_box_labels(y, len(x), len(class_names), f"{source}: y_{name}")
        return x, check_mask_labels(y, x, len(class_names), f"{source}: y_{name}")

    x_train, y_train = checked(train[0], train[1], "train")
    if test is None:
        keep, held = stratified_split(label_strata(y_train, label_kind), cfg.test_fraction, cfg.seed)
        x_test, y_test = x_train[held], y_train[held]
        x_train, y_train = x_train[keep], y_train[keep]
        notes.append(f"no test split in the source: held out {len(y_test)} images (data.test_fraction = {cfg.test_fraction})")
    else:
        x_test, y_test = checked(test[0], test[1], "test")
    if label_kind == "boxes" and y_train.shape[1] != y_test.shape[1]:
        raise DataError(
            f"{source}: train labels have {y_train.shape[1]} rows per image but test labels {y_test.shape[1]}; "
            "pad both to data.max_objects"
        )
    if len(y_train) == 0:
        raise DataError(f"{source}: there are no training images")
    if len(y_test) == 0:
        raise DataError(f"{source}: the test split is empty; give test images or raise data.test_fraction")

    for_train = stratified_subset(label_strata(y_train, label_kind), cfg.train_subset, cfg.seed)
    if len(for_train) < len(y_train):
        x_train, y_train = x_train[for_train], y_train[for_train]
    for_test = stratified_subset(label_strata(y_test, label_kind), cfg.test_subset, cfg.seed)
    if len(for_test) < len(y_test):
        x_test, y_test = x_test[for_test], y_test[for_test]

    size, channels = _size_and_channels(cfg, x_train, x_test, source, notes, masks=label_kind == "masks")
    if label_kind == "masks" and size is not None:
        if tuple(y_train.shape[1:3]) != size:
            y_train = _resize_masks(y_train, size)
        if tuple(y_test.shape[1:3]) != size:
            y_test = _resize_masks(y_test, size)
    x_train = conform(x_train, size, channels, label="train images")
    x_test = conform(x_test, size, channels, label="test images")
    return make_bundle(
        cfg, (x_train, y_train), (x_test, y_test), class_names, source, skipped=skipped, notes=notes, label_kind=label_kind
    )
