"""Input noise for denoising autoencoders, applied inside tf.data to the input only.

A denoising autoencoder learns ``clean = f(noisy)``; the noise must therefore be drawn where the
batches are made (so every epoch sees fresh corruption, and no copy of the noisy data set is
kept), must leave the target untouched, and must be reproducible for a seed. Like
:mod:`tfcnn.data.augment`, each batch gets its own stateless seed from
``tf.data.Dataset.random``; evaluation splits use a fixed seed per batch position, so the test
split's noisy images are the same in every process (evaluate, verify, the report).

Three kinds, on float pixels in 0..255:

* ``gaussian``: ``x + N(0, (amount * 255)^2)``, clipped to 0..255;
* ``salt_pepper``: a fraction ``amount`` of pixels set to 0 or 255 (half each);
* ``masking``: a fraction ``amount`` of pixels set to 0 (dropout-style "masking noise").
"""

from __future__ import annotations

import tensorflow as tf

KINDS = ("none", "gaussian", "salt_pepper", "masking")


def add_noise(images: tf.Tensor, kind: str, amount: float, seed: tf.Tensor) -> tf.Tensor:
    """``images`` (any numeric dtype, 0..255) corrupted by ``kind``, as float32 in 0..255.

    ``seed`` is a stateless seed (int64[2]); the same seed gives the same corruption.
    """
    x = tf.cast(images, tf.float32)
    if kind == "none" or amount <= 0:
        return x
    if kind == "gaussian":
        noise = tf.random.stateless_normal(tf.shape(x), seed=seed, stddev=255.0 * float(amount))
        return tf.clip_by_value(x + noise, 0.0, 255.0)
    hit = tf.random.stateless_uniform(tf.shape(x), seed=seed) < float(amount)
    if kind == "masking":
        return tf.where(hit, tf.zeros_like(x), x)
    if kind == "salt_pepper":
        salt = tf.random.stateless_uniform(tf.shape(x), seed=tf.random.experimental.stateless_fold_in(seed, 1)) < 0.5
        return tf.where(hit, tf.where(salt, tf.fill(tf.shape(x), 255.0), tf.zeros_like(x)), x)
    raise ValueError(f"unknown noise kind {kind!r}; choose one of {', '.join(KINDS)}")


def noisy_pairs(ds: tf.data.Dataset, kind: str, amount: float, seed: int, *, training: bool) -> tf.data.Dataset:
    """Batches ``(images, labels)`` -> ``(noisy float32 images, clean float32 images in [0, 1])``.

    ``training``: a fresh seed per batch and epoch; otherwise batch ``i`` always gets the seed
    ``(seed, i)``, so validation and test corruption is fixed.
    """
    base = tf.constant(seed, tf.int64)

    def pair(images: tf.Tensor, r: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        clean = tf.cast(images, tf.float32)
        return add_noise(clean, kind, amount, tf.stack([base, r])), clean / 255.0

    if training:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    else:
        seeds = tf.data.Dataset.range(1 << 62)
    return tf.data.Dataset.zip((ds, seeds)).map(
        lambda batch, r: pair(batch[0], r), num_parallel_calls=tf.data.AUTOTUNE
    )


def noisy_array(images, kind: str, amount: float, seed: int, batch_size: int):
    """The same fixed corruption :func:`noisy_pairs` gives an evaluation split, as a numpy array
    (float32, 0..255), for the evaluation and the report's noisy-vs-denoised figures."""
    import numpy as np

    ds = tf.data.Dataset.from_tensor_slices((images, np.zeros(len(images), np.int32))).batch(batch_size)
    out = [x.numpy() for x, _ in noisy_pairs(ds, kind, amount, seed, training=False)]
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), np.float32)
