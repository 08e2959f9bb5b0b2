"""Batch mixing: mixup and CutMix, each with a probability per batch; labels become probability vectors.

mixup uses Keras's ``MixUp`` layer (its per-image lambda ~ Beta(alpha, alpha) and its partner
permutation are drawn from the batch seed; its ``transform_images``/``transform_labels`` do the
blend). Two things Keras lacks are added around it: a probability per batch (a batch that is
not mixed gets lambda = 1, which Keras's blend returns unchanged), and label vectors (it needs
one-hot labels; the pipeline's are class ids).

CutMix is written here: Keras 3.15's ``CutMix`` keeps the box wholly inside the image (so
borders are pasted less often than the centre), computes lambda from the float box while its
mask takes whole pixels (so the label weights differ from the pasted area), draws its Beta
concentration itself from a range every batch, and has no probability per batch. Here, as in Yun
et al. 2019, the box has sides sqrt(1 - lambda) * H and * W around a uniformly drawn centre,
is clipped to the image in whole pixels, and lambda is recomputed as 1 - box area / image area.
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from tfcnn.config import AugmentConfig
from tfcnn.data.augment_ops import BatchSeeds, box_mask, fold, uniform

# (uint8 images [B,H,W,C], int labels [B], seed int64[2]) -> (uint8 images, float32 labels [B, K])
Mixer = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def beta(shape, alpha: float, seed: tf.Tensor) -> tf.Tensor:
    """Beta(alpha, alpha) draws from two stateless gammas."""
    g1 = tf.random.stateless_gamma(shape, seed=fold(seed, 0), alpha=alpha)
    g2 = tf.random.stateless_gamma(shape, seed=fold(seed, 1), alpha=alpha)
    return g1 / tf.maximum(g1 + g2, 1e-12)


def mixup(x: tf.Tensor, y: tf.Tensor, lam: tf.Tensor, perm: tf.Tensor, layer: keras.layers.Layer | None = None):
    """lam * (x, y) + (1 - lam) * (x, y)[perm] per image, through Keras's MixUp transform."""
    layer = layer or keras.layers.MixUp()
    t = {"mix_weight": tf.cast(lam, tf.float32), "permutation_order": perm}
    return tf.cast(layer.transform_images(x, t), tf.float32), tf.cast(layer.transform_labels(y, t), tf.float32)


def cutmix_box(lam: tf.Tensor, h: int, w: int, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(top, left, height, width) int32[B] of each image's box: sides sqrt(1 - lam) * (H, W)
    around a uniform centre, clipped to the image."""
    b = tf.shape(lam)[0]
    cut = tf.sqrt(1.0 - tf.cast(lam, tf.float32))
    ch = tf.cast(tf.round(cut * h), tf.int32)
    cw = tf.cast(tf.round(cut * w), tf.int32)
    cy = tf.random.stateless_uniform([b], seed=fold(seed, 0), maxval=h, dtype=tf.int32)
    cx = tf.random.stateless_uniform([b], seed=fold(seed, 1), maxval=w, dtype=tf.int32)
    y0 = tf.clip_by_value(cy - ch // 2, 0, h)
    y1 = tf.clip_by_value(cy + ch - ch // 2, 0, h)
    x0 = tf.clip_by_value(cx - cw // 2, 0, w)
    x1 = tf.clip_by_value(cx + cw - cw // 2, 0, w)
    return y0, x0, y1 - y0, x1 - x0


def cutmix(x: tf.Tensor, y: tf.Tensor, box: tuple, perm: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Paste ``x[perm]`` into each image's box; (images, labels, lambda) with lambda recomputed
    from the clipped box: 1 - box area / image area."""
    h, w = x.shape[1], x.shape[2]
    top, left, bh, bw = box
    inside = box_mask(h, w, top, left, bh, bw)
    images = tf.where(inside, tf.gather(x, perm), x)
    lam = 1.0 - tf.cast(bh * bw, tf.float32) / float(h * w)
    labels = lam[:, None] * y + (1.0 - lam[:, None]) * tf.gather(y, perm)
    return images, labels, lam


def build_mixer(cfg: AugmentConfig, num_classes: int) -> Mixer | None:
    """The per-batch mixing step for ``cfg``, or None when mixup and CutMix are both off.

    With both on, each batch picks one of the two (even odds, as timm does), then applies it
    with that one's probability; labels are always one-hot or mixed probability vectors, so
    the dataset's label spec does not change from batch to batch.
    """
    if not cfg.mixes_labels:
        return None
    use_mixup = bool(cfg.mixup and cfg.mixup_prob)
    use_cutmix = bool(cfg.cutmix and cfg.cutmix_prob)
    layer = keras.layers.MixUp(alpha=cfg.mixup) if use_mixup else None

    def mix(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.cast(images, tf.float32)
        y = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
        b = tf.shape(x)[0]
        pick_mixup = uniform([], fold(seed, 1)) < 0.5 if (use_mixup and use_cutmix) else tf.constant(use_mixup)
        if use_mixup:
            on = pick_mixup & (uniform([], fold(seed, 2)) < cfg.mixup_prob)
            t = layer.get_random_transformation(x, training=True, seed=BatchSeeds(fold(seed, 3)))
            lam = tf.where(on, tf.cast(t["mix_weight"], tf.float32), tf.ones([b]))
            x, y = mixup(x, y, lam, t["permutation_order"], layer)
        if use_cutmix:
            on = tf.logical_not(pick_mixup) & (uniform([], fold(seed, 4)) < cfg.cutmix_prob)
            lam = tf.where(on, beta([b], cfg.cutmix, fold(seed, 5)), tf.ones([b]))
            perm = tf.random.experimental.stateless_shuffle(tf.range(b), seed=fold(seed, 6))
            x, y, _ = cutmix(x, y, cutmix_box(lam, x.shape[1], x.shape[2], fold(seed, 7)), perm)
        return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8), y

    return mix
