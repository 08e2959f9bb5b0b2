"""Serialisable layers of the autoencoders (registered with Keras under package "tfcnn").

They are imported by :func:`tfcnn.models.saved.load_trained_model` before any ``model.keras``
is read, like :mod:`tfcnn.models.layers`.

The VAE's KL term is added by :class:`Sampling` with ``add_loss`` rather than computed by a
custom ``train_step``: ``model.losses`` is what both engines already add to the task's loss
(``model.fit`` through ``compute_loss``, the tape engine through its regularization term), so
one functional model trains the same in both, and its validation loss is the (scaled) negative
ELBO. At inference (``training=False``) the layer returns the mean, so an exported VAE is
deterministic.
"""

from __future__ import annotations

import keras
from keras import ops


def kl_divergence(mean, log_var):
    """KL(N(mean, exp(log_var)) || N(0, I)) per example, summed over the latent dimensions:
    ``-0.5 * sum(1 + log_var - mean^2 - exp(log_var))`` (the closed form for diagonal Gaussians)."""
    mean = ops.cast(mean, "float32")
    log_var = ops.cast(log_var, "float32")
    return -0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=-1)


@keras.saving.register_keras_serializable(package="tfcnn")
class Sampling(keras.layers.Layer):
    """``z = mean + exp(log_var / 2) * eps`` while training (the reparameterisation trick), ``mean``
    otherwise; adds ``beta * mean_batch(KL) / pixels`` to the model's losses.

    Dividing by ``pixels`` (H * W * C) puts the KL on the same per-pixel scale as the task's
    reconstruction loss (a mean over pixels), so the total is ``(sum-over-pixels reconstruction
    + beta * KL) / pixels``: the negative ELBO per pixel for the binary cross-entropy loss.
    """

    def __init__(self, beta: float = 1.0, pixels: int = 1, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.beta = float(beta)
        self.pixels = int(pixels)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        mean, log_var = inputs
        self.add_loss(self.beta * ops.mean(kl_divergence(mean, log_var)) / float(self.pixels))
        if training:
            eps = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
            return mean + ops.exp(0.5 * log_var) * eps
        return mean

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "beta": self.beta, "pixels": self.pixels, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfcnn")
class PixelShuffle(keras.layers.Layer):
    """Sub-pixel upsampling: [B, H, W, C*r*r] -> [B, H*r, W*r, C] (TF's depth_to_space, one
    DEPTH_TO_SPACE op in TFLite), the checkerboard-free alternative to transposed convolution."""

    def __init__(self, factor: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, x):
        import tensorflow as tf

        return tf.nn.depth_to_space(x, self.factor)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        r = self.factor
        return (b, None if h is None else h * r, None if w is None else w * r, c // (r * r))

    def get_config(self) -> dict:
        return {**super().get_config(), "factor": self.factor}
