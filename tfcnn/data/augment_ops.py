"""The augmentation ops Keras 3.15 lacks or gets wrong for a seeded tf.data pipeline.

Every op here takes float32 pixels ``[B, H, W, C]`` in [0, 255] and a stateless seed (int64[2])
and returns float32 pixels of the same shape; randomness is per image and comes only from the
seed (no variable, nothing in Python at run time), so the same seed gives the same batch.

What is written here, and why not the Keras layer:

* :func:`keras_op` runs any Keras image-preprocessing layer that honours the ``seed`` argument
  of ``get_random_transformation`` (flip, rotation, shear, brightness, hue, blur, ...) from the
  batch seed, through :class:`BatchSeeds`.
* :func:`pad_crop`: ``keras.layers.RandomCrop`` draws ONE offset per batch (every image shifts
  the same way); CIFAR-style padding and cropping needs one offset per image.
* :func:`resized_crop`: Keras has no random-resized crop.
* :func:`texture`: no Keras layer puts an object on a background; this composites each image's
  ink over the textured noise :mod:`tfcnn.data.scenes` paints its canvases with, so a classifier
  meant as a scene model's backbone learns items as they look there (see :func:`texture`).
* :func:`gaussian_noise`: ``keras.layers.GaussianNoise`` draws from its own seed generator in
  ``call`` and takes no seed; one stateless normal draw is all it is.
* :func:`erase`: ``keras.layers.RandomErasing`` samples the patch's height and width fractions
  independently (its ``scale`` is neither an area nor an aspect range); Zhong et al. 2017 draw
  the area fraction and the aspect ratio.
* :class:`RandAugment` and :class:`AugMix`: Keras's layers draw their op choice from their own
  state variable (ignoring the seed they are handed; AugMix even picks ops with Python's
  ``random`` at trace time, so inside a traced ``Dataset.map`` every batch gets the same
  chain for the whole run), choose one op for the whole batch, and RandAugment computes all 11
  ops every round. These use Keras's own op layers (and magnitudes), but pick an op per image
  and compute each image's op only (:func:`per_image`), so a round costs one op, not eleven.

``keras.layers.RandomColorJitter`` is not used: its sub-layers draw from their own generators
(a variable captured in the map, and other draws on every run for one seed), so brightness,
contrast, saturation and hue are the four Keras layers themselves, each seeded.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import keras
import tensorflow as tf

Op = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (float pixels [B,H,W,C], seed int64[2]) -> float pixels


class BatchSeeds(keras.random.SeedGenerator):
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


def fold(seed: tf.Tensor, salt: int) -> tf.Tensor:
    """A new stateless seed from ``seed`` (one per op, so adding an op never shifts another's draws)."""
    return tf.random.experimental.stateless_fold_in(seed, salt)


def uniform(shape, seed: tf.Tensor, lo: float = 0.0, hi: float = 1.0) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed=seed, minval=lo, maxval=hi)


def keras_op(layer: keras.layers.Layer) -> Op:
    """A Keras preprocessing layer as an :data:`Op`, its random draws taken from the batch seed."""

    def op(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        transformation = layer.get_random_transformation(x, training=True, seed=BatchSeeds(seed))
        return tf.cast(layer.transform_images(x, transformation, training=True), tf.float32)

    return op


def per_image(ops: Sequence[Op], idx: tf.Tensor, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Apply ``ops[idx[i]]`` to image i: the batch is partitioned by op, each op runs on its own
    images only (an empty partition is a batch of 0) and the results are stitched back in order."""
    n = len(ops)
    positions = tf.dynamic_partition(tf.range(tf.shape(x)[0]), idx, n)
    parts = tf.dynamic_partition(x, idx, n)
    outs = [_unless_empty(op, part, fold(seed, k)) for k, (op, part) in enumerate(zip(ops, parts))]
    out = tf.dynamic_stitch(positions, outs)
    return tf.ensure_shape(out, x.shape)


def _unless_empty(op: Op, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """``op(x)``, skipped for a partition no image chose: some Keras ops index image 0
    (RandomGaussianBlur, for one) and fail on a batch of none."""
    return tf.cond(tf.shape(x)[0] > 0, lambda: tf.cast(op(x, seed), tf.float32), lambda: x)


def identity(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return x


# --------------------------------------------------------------------------- geometric


def pad_crop(pad: int) -> Op:
    """Zero-pad by ``pad`` pixels on every side, then crop back to H x W at a random offset per
    image (so each image moves by -pad..+pad pixels in each direction, the gap filled with 0)."""

    def op(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        h, w = x.shape[1], x.shape[2]
        b = tf.shape(x)[0]
        xp = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        oy = tf.random.stateless_uniform([b], seed=seed, maxval=2 * pad + 1, dtype=tf.int32)
        ox = tf.random.stateless_uniform([b], seed=fold(seed, 1), maxval=2 * pad + 1, dtype=tf.int32)
        rows = oy[:, None] + tf.range(h)[None, :]
        cols = ox[:, None] + tf.range(w)[None, :]
        xp = tf.gather(xp, rows, axis=1, batch_dims=1)
        return tf.gather(xp, cols, axis=2, batch_dims=1)

    return op


def resized_crop(scale: Sequence[float], ratio: Sequence[float]) -> Op:
    """Inception-style random-resized crop: a box of ``scale`` (fraction of the image area) and
    ``ratio`` (width/height in pixels, log-uniform) per image, resized back to H x W (bilinear).

    torchvision retries a box that does not fit ten times, then falls back to a centre crop;
    here a side that does not fit is clipped to the image, which keeps the op one batched
    ``crop_and_resize`` with no loop (the area is then smaller than drawn, never larger).
    """
    lo_s, hi_s = float(scale[0]), float(scale[1])
    lo_r, hi_r = math.log(float(ratio[0])), math.log(float(ratio[1]))

    def op(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        h, w = x.shape[1], x.shape[2]
        b = tf.shape(x)[0]
        s = uniform([b], fold(seed, 0), lo_s, hi_s)
        r = tf.exp(uniform([b], fold(seed, 1), lo_r, hi_r))
        fh = tf.minimum(tf.sqrt(s * w / (r * h)), 1.0)  # crop height / image height
        fw = tf.minimum(tf.sqrt(s * h * r / w), 1.0)
        top = uniform([b], fold(seed, 2)) * (1.0 - fh)
        left = uniform([b], fold(seed, 3)) * (1.0 - fw)
        boxes = tf.stack([top, left, top + fh, left + fw], axis=1)
        return tf.image.crop_and_resize(x, boxes, tf.range(b), [h, w], method="bilinear")

    return op


# --------------------------------------------------------------------------- photometric


def texture(amplitude: float, cell: int, ink: float) -> Op:
    """Composite every image over its own textured noise, by the rule ``fashion_scenes`` pastes
    items onto its canvases (:func:`tfcnn.data.scenes.render`).

    Why: a classifier trained on Fashion-MNIST's black backgrounds and used as the body of a
    scene segmenter or detector meets its items on textured noise there; measured on the
    segmentation pipeline's test scenes (an ad hoc check, 2,516 items cut out at their pasted
    frame), the 5-epoch items classifier scored 89.9% on the clean items and 72.5% on the same
    items cut from the scenes (80.5% with this op at 0.15; the segmenter started from that body
    reached the same Dice, 0.821 against 0.822). The noise is the scenes': a coarse uniform grid
    (one value per ``cell`` pixels) bilinearly upsampled, times 0.8, plus 0.2 of per-pixel grain, spanning
    ``0 .. amplitude * 255``; one texture per image (shared by its channels). Compositing is
    alpha by ink: ``alpha = min(1, value / ink)`` of the image (its channel mean), and
    ``alpha * image + (1 - alpha) * texture``, so ink pixels (``>= ink``) are unchanged and a
    black pixel becomes pure texture.
    """
    top = 255.0 * float(amplitude)

    def op(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        b, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
        gh, gw = max(2, round(h / cell)), max(2, round(w / cell))
        coarse = uniform(tf.stack([b, gh, gw, 1]), fold(seed, 1))
        smooth = tf.image.resize(coarse, [h, w], method="bilinear")
        grain = uniform(tf.stack([b, h, w, 1]), fold(seed, 2))
        noise = (0.8 * smooth + 0.2 * grain) * top
        alpha = tf.minimum(tf.reduce_mean(x, axis=-1, keepdims=True) / float(ink), 1.0)
        return alpha * x + (1.0 - alpha) * noise

    return op


def gaussian_noise(std: float) -> Op:
    """Add N(0, std^2) noise per pixel (pixel units; the caller clips to [0, 255])."""

    def op(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        return x + std * tf.random.stateless_normal(tf.shape(x), seed=seed)

    return op


# --------------------------------------------------------------------------- erasing


def box_mask(h: int, w: int, top: tf.Tensor, left: tf.Tensor, bh: tf.Tensor, bw: tf.Tensor) -> tf.Tensor:
    """bool[B, H, W, 1]: True inside each image's box [top, top+bh) x [left, left+bw)."""
    rows = tf.range(h)[None, :, None]
    cols = tf.range(w)[None, None, :]
    inside = (
        (rows >= top[:, None, None])
        & (rows < (top + bh)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + bw)[:, None, None])
    )
    return inside[..., None]


def erase(
    probability: float,
    area: Sequence[float],
    aspect: Sequence[float],
    value: str = "mean",
    fill: Sequence[float] | None = None,
) -> Op:
    """Random erasing (Zhong et al. 2017): with ``probability`` per image, a box of ``area``
    (fraction of the image) and ``aspect`` (height/width, log-uniform) placed wholly inside the
    image is painted with the training mean (``"mean"``: 0 after the model's normalisation),
    0 (``"zero"``) or uniform noise (``"random"``). A side longer than the image is clipped."""
    lo_a, hi_a = float(area[0]), float(area[1])
    lo_r, hi_r = math.log(float(aspect[0])), math.log(float(aspect[1]))
    mean = list(fill) if fill is not None else [0.0]

    def op(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        h, w = x.shape[1], x.shape[2]
        b = tf.shape(x)[0]
        target = uniform([b], fold(seed, 0), lo_a, hi_a) * float(h * w)
        r = tf.exp(uniform([b], fold(seed, 1), lo_r, hi_r))
        bh = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target * r)), tf.int32), 1, h)
        bw = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target / r)), tf.int32), 1, w)
        top = tf.cast(uniform([b], fold(seed, 2)) * tf.cast(h - bh + 1, tf.float32), tf.int32)
        left = tf.cast(uniform([b], fold(seed, 3)) * tf.cast(w - bw + 1, tf.float32), tf.int32)
        on = uniform([b], fold(seed, 4)) < probability
        inside = box_mask(h, w, top, left, bh, bw) & on[:, None, None, None]
        if value == "random":
            paint = uniform(tf.shape(x), fold(seed, 5), 0.0, 255.0)
        elif value == "zero":
            paint = tf.zeros_like(x)
        else:
            paint = tf.broadcast_to(tf.reshape(tf.constant(mean, tf.float32), [1, 1, 1, -1]), tf.shape(x))
        return tf.where(inside, paint, x)

    return op


def cutout_batch(x: tf.Tensor, fraction: float, seed: tf.Tensor, fill: list[float] | None = None) -> tf.Tensor:
    """Paint one square of side `fraction` * min(H, W) per image with `fill`, centred uniformly
    (the square may overhang the border, as in DeVries & Taylor 2017). Kept as it was for the
    pipeline files that use ``cutout``; :func:`erase` is the general form."""
    shape = tf.shape(x)
    b, h, w = shape[0], shape[1], shape[2]
    side = tf.maximum(1, tf.cast(tf.round(fraction * tf.cast(tf.minimum(h, w), tf.float32)), tf.int32))
    cy = tf.random.stateless_uniform([b], seed=seed, maxval=h, dtype=tf.int32)
    cx = tf.random.stateless_uniform([b], seed=fold(seed, 1), maxval=w, dtype=tf.int32)
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


# --------------------------------------------------------------------------- policies


def _posterize(magnitude: float) -> keras.layers.Layer:
    """Keras's RandAugment keeps ``int(8 * magnitude)`` bits, so a *stronger* magnitude posterizes
    *less* (0.3 keeps 2 bits); here it keeps 8 - round(4 * magnitude) bits (8 .. 4), as timm does."""
    return keras.layers.RandomPosterization(factor=max(1, 8 - round(4 * magnitude)), value_range=(0, 255))


class RandAugment:
    """RandAugment (Cubuk et al. 2019): ``num_ops`` rounds, each applying one op drawn uniformly
    per image from Keras's RandAugment op list at Keras's magnitude ``magnitude`` (in [0, 1])."""

    def __init__(self, num_ops: int, magnitude: float):
        keras_ra = keras.layers.RandAugment(value_range=(0, 255), num_ops=num_ops, factor=magnitude)
        # Keras 3.15 keeps its op layers as attributes named in _AUGMENT_LAYERS (tested in test_augment.py).
        layers = [getattr(keras_ra, name) for name in keras_ra._AUGMENT_LAYERS]
        self.names = [n if n != "random_posterization" else "posterization" for n in keras_ra._AUGMENT_LAYERS]
        layers = [_posterize(magnitude) if n == "posterization" else l for n, l in zip(self.names, layers)]
        self.ops = [keras_op(layer) for layer in layers]
        self.num_ops = num_ops

    def __call__(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        b = tf.shape(x)[0]
        for i in range(self.num_ops):
            idx = tf.random.stateless_uniform([b], seed=fold(seed, 2 * i), maxval=len(self.ops), dtype=tf.int32)
            x = tf.clip_by_value(per_image(self.ops, idx, x, fold(seed, 2 * i + 1)), 0.0, 255.0)
        return x


def _gamma(shape, alpha: float, seed: tf.Tensor) -> tf.Tensor:
    return tf.random.stateless_gamma(shape, seed=seed, alpha=alpha)


class AugMix:
    """AugMix (Hendrycks et al. 2020) per image: ``chains`` chains of 1..``depth`` ops (Keras's
    AugMix op list without the ops that overlap ImageNet-C, ``all_ops=False``, as in the paper),
    mixed with Dirichlet(alpha) weights, then blended with the original by m ~ Beta(alpha, alpha).
    (The Jensen-Shannon consistency loss of the paper is not part of this op.)"""

    def __init__(self, chains: int, depth: int, magnitude: float, alpha: float):
        keras_am = keras.layers.AugMix(value_range=(0, 255), factor=magnitude, all_ops=False)
        names = list(keras_am._augment_layers)
        layers = [_posterize(magnitude) if n == "random_posterization" else getattr(keras_am, n) for n in names]
        self.ops: list[Op] = [keras_op(layer) for layer in layers] + [identity]
        self.chains, self.depth, self.alpha = chains, depth, alpha

    def __call__(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        b = tf.shape(x)[0]
        g = _gamma([b, self.chains], self.alpha, fold(seed, 0))
        weights = g / tf.reduce_sum(g, axis=1, keepdims=True)
        g1, g2 = _gamma([b], self.alpha, fold(seed, 1)), _gamma([b], self.alpha, fold(seed, 2))
        m = (g1 / (g1 + g2))[:, None, None, None]
        n = len(self.ops) - 1  # the last op is the identity: a chain shorter than `depth`
        mixed = tf.zeros_like(x)
        for c in range(self.chains):
            cseed = fold(seed, 100 + c)
            length = tf.random.stateless_uniform([b], seed=fold(cseed, 0), minval=1, maxval=self.depth + 1, dtype=tf.int32)
            xc = x
            for d in range(self.depth):
                idx = tf.random.stateless_uniform([b], seed=fold(cseed, 1 + 2 * d), maxval=n, dtype=tf.int32)
                idx = tf.where(d < length, idx, n)
                xc = tf.clip_by_value(per_image(self.ops, idx, xc, fold(cseed, 2 + 2 * d)), 0.0, 255.0)
            mixed += weights[:, c, None, None, None] * xc
        return m * x + (1.0 - m) * mixed
