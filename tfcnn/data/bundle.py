"""Turn in-memory uint8 images into the train/val/test tf.data pipelines every engine consumes.

Images stay uint8 all the way to the model (4x less memory in `cache`, and the model's own
Normalization layer owns the maths), labels are int32 class ids, or for detection / segmentation
(``label_kind``) padded float32 box rows or uint8 masks, which splits stratify through
:func:`label_strata` and the train split augments with :mod:`tfcnn.data.box_augment`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from tfcnn.config import DataConfig
from tfcnn.data.augment import Augmenter, augment_dataset, build_augmenter
from tfcnn.data.mixing import Mixer, build_mixer
from tfcnn.data.info import DataInfo
from tfcnn.errors import ConfigError

if TYPE_CHECKING:
    from tfcnn.data.box_augment import LabelledAugmenter

AUTOTUNE = tf.data.AUTOTUNE


@dataclass
class DataBundle:
    """The three splits as batched datasets plus the arrays behind them.

    ``train`` is shuffled (reshuffled every epoch, seeded) and augmented; ``val`` and ``test`` are
    deterministic. Elements are ``(uint8[B, H, W, C], int32[B])``, except that with mixup or
    CutMix on (``data.augment``) the train split's labels are ``float32[B, K]`` probability vectors.
    With ``info.label_kind == "boxes"`` labels are ``float32[B, M, 5]`` (PAD rows -1 last), with
    ``"masks"`` ``uint8[B, H, W]``, in every split.
    """

    info: DataInfo
    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images uint8 NHWC, labels int32 | boxes | masks)

    def unbatched(self, split: str) -> tf.data.Dataset:
        """Un-shuffled, un-augmented examples of one split (representative data, verification)."""
        x, y = self.arrays[split]
        return tf.data.Dataset.from_tensor_slices((x, y))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with `fraction` of every class held out, deterministic for a seed.

    The total held out is round(N * fraction), shared between classes by largest remainder, so
    split sizes are exact; a class with 2+ examples gives at least one to each side when
    0 < fraction, and a single-example class stays on the keep side.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * float(fraction)
    quota = np.floor(exact).astype(np.int64)
    spare = int(round(len(labels) * fraction)) - int(quota.sum())
    if spare > 0:
        by_remainder = sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]), i))
        for i in by_remainder[:spare]:
            quota[i] += 1
    keep, held = [], []
    for cls, count, n_held in zip(classes, counts, quota):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        if fraction > 0 and count > 1:
            n_held = min(max(int(n_held), 1), count - 1)
        else:
            n_held = min(int(n_held), count - 1) if count > 1 else 0
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    keep_idx = np.sort(np.concatenate(keep)) if keep else np.array([], dtype=np.int64)
    held_idx = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    return keep_idx, held_idx


LABEL_KINDS = ("classes", "boxes", "masks")


def label_strata(labels: np.ndarray, kind: str = "classes") -> np.ndarray:
    """The class each image is stratified by: its class id ("classes"), its first object's class
    ("boxes"; -1 for an image without objects, its own stratum) or its most frequent foreground
    mask value minus one ("masks"; -1 for an all-background mask; ties go to the lower id)."""
    if kind == "classes":
        return labels
    if kind == "boxes":
        return np.asarray(labels)[:, 0, 4].astype(np.int64) if len(labels) and labels.shape[1] else np.full(len(labels), -1)
    if kind == "masks":
        flat = np.asarray(labels).reshape(len(labels), -1)
        top = int(flat.max(initial=0))
        counts = np.stack([(flat == v).sum(1) for v in range(1, top + 1)], 1) if top else np.zeros((len(flat), 0))
        if counts.shape[1] == 0:
            return np.full(len(flat), -1, np.int64)
        return np.where(counts.max(1) > 0, counts.argmax(1), -1).astype(np.int64)
    raise ValueError(f"label kind {kind!r} is not one of {LABEL_KINDS}")


def stratified_subset(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Indices of at most n examples keeping class proportions (for fast runs and tests)."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    _, held = stratified_split(labels, n / len(labels), seed)
    return held[:n]


def channel_stats(images: np.ndarray, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in pixel units, chunked so 60k images never become float64 at once."""
    c = images.shape[-1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].astype(np.float64).reshape(-1, c)
        total += block.sum(0)
        total_sq += (block**2).sum(0)
        count += block.shape[0]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def select_classes(
    wanted: list, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], names: list[str]
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str]]:
    """``data.classes``: only the listed classes (names or ids), relabelled 0..K-1 in the listed
    order, in both splits (so a model trained on some classes never sees the others, test included)."""
    ids = []
    for c in wanted:
        if isinstance(c, str) and c in names:
            ids.append(names.index(c))
        elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names):
            ids.append(c)
        else:
            raise ConfigError(f"data.classes: {c!r} is not a class of this data; give names ({', '.join(map(repr, names[:10]))}) or ids 0..{len(names) - 1}")
    if len(set(ids)) != len(ids) or len(ids) < 2:
        raise ConfigError(f"data.classes = {wanted!r} must name at least 2 different classes")
    lut = np.full(len(names), -1, np.int64)
    lut[ids] = np.arange(len(ids))

    def keep(split: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        x, y = split
        new = lut[np.asarray(y, np.int64)]
        mask = new >= 0
        return x[mask], new[mask].astype(np.asarray(y).dtype)

    return keep(train), keep(test), [names[i] for i in ids]


def make_bundle(
    cfg: DataConfig,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    class_names: list[str],
    source: str,
    skipped: list[dict[str, str]] | None = None,
    augment: "Augmenter | keras.layers.Layer | None" = None,
    notes: list[str] | None = None,
    *,
    label_kind: str = "classes",
) -> DataBundle:
    """Split, subset, compute statistics and build the pipelines from already-decoded arrays.

    Arrays must already be validated uint8 NHWC / int labels (the sources and `from_arrays` do
    that; box and mask labels: :func:`tfcnn.data.inmemory.from_label_arrays`). `augment`
    defaults to the seeded augmenter built from ``cfg.augment``; a Keras layer is also accepted
    (called on float pixels, result rounded back to uint8). With `label_kind` "boxes" or
    "masks" splits stratify by :func:`label_strata` and the train split is augmented by
    :mod:`tfcnn.data.box_augment` (a caller's `augment` is refused: it could not move the labels).
    """
    if label_kind not in LABEL_KINDS:
        raise ValueError(f"label_kind {label_kind!r} is not one of {LABEL_KINDS}")
    if cfg.classes is not None:
        if label_kind != "classes":
            raise ConfigError(f"data.classes selects classes of class labels; {label_kind} labels are kept whole (remove data.classes)")
        train, test, class_names = select_classes(cfg.classes, train, test, list(class_names))
    x_train, y_train = train
    x_test, y_test = test
    seed = cfg.seed
    sub = stratified_subset(label_strata(y_train, label_kind), cfg.train_subset, seed)
    x_train, y_train = x_train[sub], y_train[sub]
    keep, held = stratified_split(label_strata(y_train, label_kind), cfg.val_fraction, seed)
    x_val, y_val = x_train[held], y_train[held]
    x_train, y_train = x_train[keep], y_train[keep]
    tsub = stratified_subset(label_strata(y_test, label_kind), cfg.test_subset, seed)
    x_test, y_test = x_test[tsub], y_test[tsub]

    mean, std = channel_stats(x_train)
    info = DataInfo(
        class_names=list(class_names),
        input_shape=tuple(int(d) for d in x_train.shape[1:]),  # type: ignore[arg-type]
        mean=mean,
        std=std,
        num_train=len(y_train),
        num_val=len(y_val),
        num_test=len(y_test),
        source=source,
        skipped=list(skipped or []),
        notes=list(notes or []),
        label_kind=label_kind,
        max_objects=int(y_train.shape[1]) if label_kind == "boxes" else None,
    )
    if label_kind != "classes":
        from tfcnn.data import box_augment

        if augment is not None:
            raise ValueError("make_bundle: a custom augment cannot move box / mask labels; leave it None")
        labelled = box_augment.build_box_augmenter(cfg.augment, label_kind, fill=mean, channels=info.input_shape[-1])
        arrays = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
        return DataBundle(
            info=info,
            train=_pipeline(x_train, y_train, cfg, training=True, label_kind=label_kind, labelled=labelled),
            val=_pipeline(x_val, y_val, cfg, training=False, label_kind=label_kind),
            test=_pipeline(x_test, y_test, cfg, training=False, label_kind=label_kind),
            arrays=arrays,
        )
    if augment is None:
        augment = build_augmenter(cfg.augment, fill=mean, channels=info.input_shape[-1])
    elif isinstance(augment, keras.layers.Layer):
        augment = _layer_augmenter(augment)
    mix = build_mixer(cfg.augment, len(class_names))
    arrays = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    return DataBundle(
        info=info,
        train=_pipeline(x_train, y_train, cfg, training=True, augment=augment, mix=mix),
        val=_pipeline(x_val, y_val, cfg, training=False),
        test=_pipeline(x_test, y_test, cfg, training=False),
        arrays=arrays,
    )


def _layer_augmenter(layer: keras.layers.Layer) -> Augmenter:
    """Wrap a caller's Keras augmentation layer in the (images, seed) -> uint8 contract."""

    def augment(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        out = layer(tf.cast(images, tf.float32), training=True)
        return tf.cast(tf.clip_by_value(tf.round(tf.cast(out, tf.float32)), 0.0, 255.0), tf.uint8)

    return augment


def balanced_examples(x: np.ndarray, y: np.ndarray, cfg: DataConfig) -> tf.data.Dataset:
    """The train split drawn class-balanced: every example's class is uniform over the classes
    present, its image a reshuffled pass through that class's images (so a rare class repeats
    within an epoch, a common one is only partly seen). An epoch keeps ``len(y)`` examples, so
    steps per epoch, schedules and checkpoints mean what they mean without it.

    Why sampling rather than (or as well as) ``train.class_weight``: weighting keeps each rare
    image once an epoch but multiplies its gradient, which with few such images gives noisy
    large steps; resampling shows the rare images more often at normal step size and lets
    augmentation vary the repeats. Each epoch draws a new class sequence
    (``rerandomize_each_iteration``), seeded by ``data.seed``, so a run is reproducible.
    """
    classes = np.unique(y)
    per_class = []
    for k in classes:
        idx = np.flatnonzero(y == k)
        ds = tf.data.Dataset.from_tensor_slices((x[idx], y[idx]))
        if cfg.cache:
            ds = ds.cache()
        seed = cfg.seed + 1 + int(k)
        per_class.append(ds.shuffle(min(cfg.shuffle_buffer, len(idx)), seed=seed, reshuffle_each_iteration=True).repeat())
    return tf.data.Dataset.sample_from_datasets(
        per_class, weights=[1.0 / len(classes)] * len(classes), seed=cfg.seed, rerandomize_each_iteration=True
    ).take(len(y))


def _pipeline(
    x: np.ndarray,
    y: np.ndarray,
    cfg: DataConfig,
    *,
    training: bool,
    augment: Augmenter | None = None,
    mix: Mixer | None = None,
    label_kind: str = "classes",
    labelled: "LabelledAugmenter | None" = None,
) -> tf.data.Dataset:
    dtype = {"classes": np.int32, "boxes": np.float32, "masks": np.uint8}[label_kind]
    if training and cfg.sampling == "balanced":
        if label_kind != "classes":
            raise ConfigError(f"data.sampling = 'balanced' draws classes evenly; {label_kind} labels have none (use 'shuffle')")
        ds = balanced_examples(x, y.astype(dtype), cfg)
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y.astype(dtype)))
        if cfg.cache:
            ds = ds.cache()
        if training:
            ds = ds.shuffle(min(cfg.shuffle_buffer, max(len(y), 1)), seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.batch(cfg.batch_size)
    if training and labelled is not None:
        from tfcnn.data.box_augment import augment_labelled_dataset

        ds = augment_labelled_dataset(ds, labelled, cfg.seed)
    elif training and (augment is not None or mix is not None):
        ds = augment_dataset(ds, augment, cfg.seed, mix)
    return ds.prefetch(AUTOTUNE)
