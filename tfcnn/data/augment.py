"""Seeded, stateless training-time augmentation for batched uint8 images inside tf.data.

Keras's random preprocessing layers keep their random state in a variable, so in a parallel
``Dataset.map`` the batches race for seeds and two runs with the same seed differ; a captured
variable also makes the pipeline awkward to distribute. Here each batch gets its own seed from
``tf.data.Dataset.random`` (re-drawn every epoch, reproducible for ``cfg.seed``), and every Keras
layer draws from that seed through :class:`_BatchSeeds`. The map function holds no variable and
does nothing in Python at run time, so the dataset can be handed to ``tf.distribute`` as is.

The ops run in a fixed order (geometric, photometric, policies, erasing/cutout), each from its
own seed folded from the batch seed, so switching one op on never changes another's draws.
Keras layers are used where they honour the seed (:func:`tfcnn.data.augment_ops.keras_op`);
:mod:`tfcnn.data.augment_ops` says which ops are written here and why, and
:mod:`tfcnn.data.mixing` does mixup / CutMix, which also change the labels. Only the train
split is augmented (:func:`tfcnn.data.bundle.make_bundle`); val, test and exported models never are.
"""

from __future__ import annotations

import math
from typing import Callable

import keras
import tensorflow as tf

from tfcnn.config import COLOUR_AUGMENTS, AugmentConfig
from tfcnn.data import augment_ops as ops
from tfcnn.data.augment_ops import BatchSeeds as _BatchSeeds  # noqa: F401  (the seeding design, re-exported)
from tfcnn.data.augment_ops import cutout_batch  # noqa: F401  (re-exported: callers and tests import it from here)
from tfcnn.data.mixing import Mixer, build_mixer  # noqa: F401
from tfcnn.data.scenes import INK_THRESHOLD
from tfcnn.errors import ConfigError

Augmenter = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (uint8 images [B,H,W,C], seed int64[2]) -> uint8


def active(cfg: AugmentConfig) -> bool:
    """True when at least one image op or batch mixing is switched on."""
    return bool(image_ops_active(cfg) or cfg.mixes_labels)


def image_ops_active(cfg: AugmentConfig) -> bool:
    """True when at least one per-image op (everything but mixup / CutMix) is switched on."""
    return bool(
        cfg.flip or cfg.vflip or cfg.translate or cfg.rotate or cfg.zoom or cfg.shear or cfg.crop_padding
        or cfg.resized_crop or cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue or cfg.grayscale
        or cfg.texture or cfg.noise or cfg.blur or cfg.randaugment_ops or cfg.augmix or cfg.erasing or cfg.cutout
    )


def check_channels(cfg: AugmentConfig, channels: int) -> None:
    """Saturation, hue and grayscale need colour: one ConfigError on 1-channel data (a silent
    no-op would let a pipeline file claim an augmentation that never happens)."""
    if channels == 3:
        return
    for name in COLOUR_AUGMENTS:
        if getattr(cfg, name):
            raise ConfigError(
                f"data.augment.{name} needs 3-channel images but the data has {channels} channel(s); "
                f"remove data.augment.{name} or set data.channels = 3"
            )


def image_ops(cfg: AugmentConfig, fill: list[float] | None = None) -> list[tuple[str, ops.Op]]:
    """(name, op) in the order they run. Keras layers where they honour the seed; see augment_ops."""
    chain: list[tuple[str, ops.Op]] = []

    def add(name: str, layer: keras.layers.Layer) -> None:
        chain.append((name, ops.keras_op(layer)))

    L = keras.layers  # noqa: N806 - short alias for the table below
    # Geometric. fill_mode="constant" (black), as torchvision's affine transforms do: no mirrored artefacts.
    if cfg.flip:
        add("flip", L.RandomFlip("horizontal"))
    if cfg.vflip:
        add("vflip", L.RandomFlip("vertical"))
    if cfg.rotate:
        add("rotate", L.RandomRotation(cfg.rotate, fill_mode="constant"))
    if cfg.zoom:
        add("zoom", L.RandomZoom(cfg.zoom, fill_mode="constant"))
    if cfg.translate:
        add("translate", L.RandomTranslation(cfg.translate, cfg.translate, fill_mode="constant"))
    if cfg.shear:
        add("shear", L.RandomShear(cfg.shear, cfg.shear, fill_mode="constant"))
    if cfg.crop_padding:
        chain.append(("crop_padding", ops.pad_crop(cfg.crop_padding)))
    if cfg.resized_crop:
        chain.append(("resized_crop", ops.resized_crop(cfg.resized_crop_scale, cfg.resized_crop_ratio)))
    # Background texture after the geometric ops (their black fill becomes texture, as the rest
    # of an item's frame is on a scene canvas) and before the photometric ones (which then act on
    # item and background alike, as on a whole scene).
    if cfg.texture:
        chain.append(("texture", ops.texture(cfg.texture, cfg.texture_cell, INK_THRESHOLD)))
    # Photometric, on [0, 255].
    if cfg.brightness:
        add("brightness", L.RandomBrightness(cfg.brightness, value_range=(0, 255)))
    if cfg.contrast:
        add("contrast", L.RandomContrast(cfg.contrast, value_range=(0, 255)))
    if cfg.saturation:  # Keras's factor 0.5 is the identity: jitter symmetrically around it
        add("saturation", L.RandomSaturation((0.5 - cfg.saturation / 2, 0.5 + cfg.saturation / 2), value_range=(0, 255)))
    if cfg.hue:
        add("hue", L.RandomHue(cfg.hue, value_range=(0, 255)))
    if cfg.grayscale:
        add("grayscale", L.RandomGrayscale(cfg.grayscale))
    if cfg.blur:
        # Keras's factor is a range the blur probability is drawn from: (p, p) makes it p per image.
        kernel = 2 * math.ceil(2 * cfg.blur_sigma) + 1
        blur = L.RandomGaussianBlur((cfg.blur, cfg.blur), kernel, (cfg.blur_sigma, cfg.blur_sigma), value_range=(0, 255))
        add("blur", blur)
    if cfg.noise:
        chain.append(("noise", ops.gaussian_noise(cfg.noise)))
    # Policies.
    if cfg.randaugment_ops:
        chain.append(("randaugment", ops.RandAugment(cfg.randaugment_ops, cfg.randaugment_magnitude)))
    if cfg.augmix:
        chain.append(("augmix", ops.AugMix(cfg.augmix_chains, cfg.augmix_depth, cfg.augmix_magnitude, cfg.augmix_alpha)))
    # Erasing last, so nothing moves the erased box or paints over it.
    if cfg.erasing:
        chain.append(("erasing", ops.erase(cfg.erasing, cfg.erasing_area, cfg.erasing_aspect, cfg.erasing_value, fill)))
    if cfg.cutout:
        fraction = float(cfg.cutout)
        chain.append(("cutout", lambda x, seed: ops.cutout_batch(x, fraction, seed, fill)))
    return chain


# Seed salts: each op's seed is fold_in(batch seed, SALT[name]), fixed per op name (not per
# position), so switching one op on or off leaves every other op's draws unchanged.
SALT = {
    "flip": 1000, "rotate": 1001, "zoom": 1002, "translate": 1003, "contrast": 1004, "cutout": 2000,
    "vflip": 1005, "shear": 1006, "crop_padding": 1007, "resized_crop": 1008, "brightness": 1009,
    "saturation": 1010, "hue": 1011, "grayscale": 1012, "blur": 1013, "noise": 1014,
    "randaugment": 1015, "augmix": 1016, "erasing": 1017, "texture": 1018,
}  # fmt: skip


def build_augmenter(
    cfg: AugmentConfig, fill: list[float] | None = None, channels: int | None = None
) -> Augmenter | None:
    """The per-batch image augmentation function for `cfg`, or None when every image op is off.

    `fill` is the per-channel training mean (pixel units) that cutout and erasing paint, which
    is zero after the model's normalisation, as in the Cutout paper. `channels` (default: the
    length of `fill`) refuses colour ops on 1-channel data. Batch mixing is not part of it
    (it changes the labels too): see :func:`tfcnn.data.mixing.build_mixer`.
    """
    channels = channels if channels is not None else (len(fill) if fill else None)
    if channels is not None:
        check_channels(cfg, channels)
    if not image_ops_active(cfg):
        return None
    chain = image_ops(cfg, fill)

    def augment(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        x = tf.cast(images, tf.float32)
        for name, op in chain:
            x = tf.clip_by_value(op(x, ops.fold(seed, SALT[name])), 0.0, 255.0)
        return tf.cast(tf.round(x), tf.uint8)

    return augment


def augment_dataset(
    ds: tf.data.Dataset, augment: Augmenter | None, seed: int, mix: Mixer | None = None
) -> tf.data.Dataset:
    """Apply `augment` to every batch of (images, labels) with a per-batch, per-epoch seed, then
    `mix` (labels become float32 [B, K] probability vectors)."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    base = tf.constant(seed, tf.int64)

    def apply(batch, r):
        images, labels = batch
        batch_seed = tf.stack([base, r])
        if augment is not None:
            images = augment(images, batch_seed)
        if mix is not None:
            images, labels = mix(images, labels, ops.fold(batch_seed, 3000))
        return images, labels

    return tf.data.Dataset.zip((ds, seeds)).map(apply, num_parallel_calls=tf.data.AUTOTUNE)
