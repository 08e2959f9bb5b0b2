"""Seeded, stateless training-time augmentation for batched uint8 images inside tf.data.

Keras's random preprocessing layers keep their random state in a variable, so in a parallel
``Dataset.map`` the batches race for seeds and two runs with the same seed differ; a captured
variable also makes the pipeline awkward to distribute. Here each batch gets its own seed from
``tf.data.Dataset.random`` (re-drawn every epoch, reproducible for ``cfg.seed``), and every Keras
layer draws from that seed through :class:`_BatchSeeds`. The map function holds no variable and
does nothing in Python at run time, so the dataset can be handed to ``tf.distribute`` as is.
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from tfcnn.config import AugmentConfig

Augmenter = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (uint8 images [B,H,W,C], seed int64[2]) -> uint8


class _BatchSeeds(keras.random.SeedGenerator):
    """A SeedGenerator stand-in that hands out stateless seeds folded from one batch seed.

    It deliberately skips SeedGenerator.__init__ (no state variable). The counter only moves
    while the map function is traced, so every draw in the graph gets its own constant offset.
    """

    def __init__(self, seed: tf.Tensor):  # noqa: D107 - no super().__init__: nothing stateful
        self._seed = seed
        self._draws = 0

    def next(self, ordered: bool = True) -> tf.Tensor:
        self._draws += 1
        return tf.random.experimental.stateless_fold_in(self._seed, self._draws)


def active(cfg: AugmentConfig) -> bool:
    """True when at least one augmentation is switched on."""
    return bool(cfg.flip or cfg.translate or cfg.rotate or cfg.zoom or cfg.contrast or cfg.cutout)


def build_augmenter(cfg: AugmentConfig, fill: list[float] | None = None) -> Augmenter | None:
    """The per-batch augmentation function for `cfg`, or None when everything is off.

    `fill` is the per-channel training mean (pixel units) that cutout paints, which is zero
    after the model's normalisation, as in the Cutout paper.
    """
    if not active(cfg):
        return None
    layers: list[keras.layers.Layer] = []
    # fill_mode="constant" (black), as torchvision's affine transforms do: no mirrored artefacts.
    if cfg.flip:
        layers.append(keras.layers.RandomFlip("horizontal"))
    if cfg.rotate:
        layers.append(keras.layers.RandomRotation(cfg.rotate, fill_mode="constant"))
    if cfg.zoom:
        layers.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="constant"))
    if cfg.translate:
        layers.append(keras.layers.RandomTranslation(cfg.translate, cfg.translate, fill_mode="constant"))
    if cfg.contrast:
        layers.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0, 255)))
    cutout = float(cfg.cutout)

    def augment(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        x = tf.cast(images, tf.float32)
        for i, layer in enumerate(layers):
            seeds = _BatchSeeds(tf.random.experimental.stateless_fold_in(seed, 1000 + i))
            transformation = layer.get_random_transformation(x, training=True, seed=seeds)
            x = tf.cast(layer.transform_images(x, transformation, training=True), tf.float32)
        if cutout:
            x = cutout_batch(x, cutout, tf.random.experimental.stateless_fold_in(seed, 2000), fill)
        return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)

    return augment


def cutout_batch(x: tf.Tensor, fraction: float, seed: tf.Tensor, fill: list[float] | None = None) -> tf.Tensor:
    """Paint one square of side `fraction` * min(H, W) per image with `fill`, centred uniformly
    (the square may overhang the border, as in DeVries & Taylor 2017)."""
    shape = tf.shape(x)
    b, h, w = shape[0], shape[1], shape[2]
    side = tf.maximum(1, tf.cast(tf.round(fraction * tf.cast(tf.minimum(h, w), tf.float32)), tf.int32))
    cy = tf.random.stateless_uniform([b], seed=seed, maxval=h, dtype=tf.int32)
    cx = tf.random.stateless_uniform(
        [b], seed=tf.random.experimental.stateless_fold_in(seed, 1), maxval=w, dtype=tf.int32
    )
    top = cy - side // 2
    left = cx - side // 2
    rows = tf.range(h)[None, :, None]
    cols = tf.range(w)[None, None, :]
    inside = (
        (rows >= top[:, None, None])
        & (rows < (top + side)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + side)[:, None, None])
    )
    value = tf.constant(fill if fill is not None else [0.0], tf.float32)
    paint = tf.broadcast_to(tf.reshape(value, [1, 1, 1, -1]), tf.shape(x))
    return tf.where(inside[..., None], paint, x)


def augment_dataset(ds: tf.data.Dataset, augment: Augmenter, seed: int) -> tf.data.Dataset:
    """Apply `augment` to every batch of (images, labels) with a per-batch, per-epoch seed."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    base = tf.constant(seed, tf.int64)

    def apply(batch, r):
        images, labels = batch
        return augment(images, tf.stack([base, r])), labels

    return tf.data.Dataset.zip((ds, seeds)).map(apply, num_parallel_calls=tf.data.AUTOTUNE)
