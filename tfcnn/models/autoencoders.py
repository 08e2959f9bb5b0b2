"""Autoencoders for the reconstruction task: dense, convolutional and variational.

Same frame as every tfcnn model (``image`` input in 0..255, a ``normalize`` layer), but no
classifier head (registered with ``head=False``): the body ends in ``reconstruction``, a sigmoid
image of the input's shape in [0, 1] (the input pixels / 255 are its target). The decoder is a
nested model named ``decoder`` taking the latent vector, so the report can decode prior samples
and interpolations without knowing the architecture; the latent layer is ``latent`` (or
``z_mean`` for the VAE).

Upsampling in the convolutional decoders (``upsample`` option), each doubling H and W:

* ``upsampling``: nearest-neighbour UpSampling2D then a 3x3 conv (no checkerboard artefacts);
* ``transpose``: Conv2DTranspose(kernel 3, stride 2, "same"): output ``s(n-1) + k - 2p`` with
  the padding Keras picks so that it is exactly ``2n`` (see :func:`transposed_conv_size`);
* ``pixel_shuffle``: a 3x3 conv to 4x the channels then depth-to-space (sub-pixel convolution).
"""

from __future__ import annotations

from typing import Any

from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError
from tfcnn.models.lazy import keras
from tfcnn.models.registry import register, regularizer

UPSAMPLE = ("upsampling", "transpose", "pixel_shuffle")


def transposed_conv_size(n: int, kernel: int, stride: int, padding: int = 0, output_padding: int = 0) -> int:
    """Length after a transposed convolution: ``s(n - 1) + k - 2p + output_padding``.

    (It inverts the convolution size ``floor((n + 2p - k) / s) + 1``: stride 2, kernel 3, no
    padding on length 2 gives 5, not the stride-1 result 4.)
    """
    return stride * (n - 1) + kernel - 2 * padding + output_padding


def _opts(cfg: ModelConfig) -> dict[str, Any]:
    return dict(cfg.options or {})


def _shape(x) -> tuple[int, int, int]:
    h, w, c = (int(d) for d in x.shape[1:])
    return h, w, c


def _positive(name: str, values: list[int], model: str) -> None:
    if not values or any(int(v) < 1 for v in values):
        raise ConfigError(f"model.options.{name} = {values!r} for {model} must list positive integers")


def _conv(x, filters: int, cfg: ModelConfig, name: str):
    x = keras.layers.Conv2D(filters, 3, padding="same", kernel_regularizer=regularizer(cfg), name=name)(x)
    if cfg.batch_norm:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.Activation(cfg.activation, name=f"{name}_act")(x)


def _encoder_convs(x, filters: list[int], cfg: ModelConfig, model: str):
    h, w, _ = _shape(x)
    factor = 2 ** len(filters)
    if h % factor or w % factor:
        raise ConfigError(
            f"{model}: {len(filters)} pooling stages need height and width divisible by {factor}, "
            f"got {h}x{w}; set data.image_size or use fewer model.options.filters"
        )
    for i, f in enumerate(filters):
        x = _conv(x, int(f), cfg, f"enc{i + 1}")
        x = keras.layers.MaxPooling2D(2, name=f"enc{i + 1}_pool")(x)
    return x


def _up(x, filters: int, mode: str, cfg: ModelConfig, name: str):
    if mode == "upsampling":
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_up")(x)
        return _conv(x, filters, cfg, name)
    if mode == "transpose":
        x = keras.layers.Conv2DTranspose(
            filters, 3, strides=2, padding="same", kernel_regularizer=regularizer(cfg), name=name
        )(x)
        if cfg.batch_norm:
            x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return keras.layers.Activation(cfg.activation, name=f"{name}_act")(x)
    if mode == "pixel_shuffle":
        from tfcnn.models.autoencoder_layers import PixelShuffle

        x = _conv(x, 4 * filters, cfg, name)
        return PixelShuffle(2, name=f"{name}_shuffle")(x)
    raise ConfigError(f"model.options.upsample = {mode!r} is not allowed; choose one of {', '.join(map(repr, UPSAMPLE))}")


def _conv_decoder(latent_dim: int, code_shape: tuple[int, int, int], filters: list[int], out_channels: int, mode: str, cfg: ModelConfig):
    """latent vector -> Dense -> code_shape -> one upsampling stage per encoder stage -> sigmoid image."""
    z = keras.Input(shape=(latent_dim,), name="z")
    h, w, c = code_shape
    x = keras.layers.Dense(h * w * c, activation=cfg.activation, name="dec_dense")(z)
    x = keras.layers.Reshape((h, w, c), name="dec_reshape")(x)
    for i, f in enumerate(reversed(filters)):
        x = _up(x, int(f), mode, cfg, f"dec{i + 1}")
    out = keras.layers.Conv2D(out_channels, 3, padding="same", activation="sigmoid", dtype="float32", name="reconstruction")(x)
    return keras.Model(z, out, name="decoder")


@register("dense_autoencoder", options={"units": [256, 128, 64], "latent": 32}, head=False)
def dense_autoencoder(x: keras.KerasTensor, cfg: ModelConfig) -> keras.KerasTensor:
    """The notes' fully connected autoencoder: 784-256-128-64-32 and back (``units``, ``latent``)."""
    o = _opts(cfg)
    units = [int(u) for u in o["units"]]
    latent = int(o["latent"])
    _positive("units", units, cfg.name)
    _positive("latent", [latent], cfg.name)
    h, w, c = _shape(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for i, u in enumerate(units):
        x = keras.layers.Dense(u, activation=cfg.activation, kernel_regularizer=regularizer(cfg), name=f"enc{i + 1}")(x)
    code = keras.layers.Dense(latent, name="latent")(x)
    z = keras.Input(shape=(latent,), name="z")
    y = z
    for i, u in enumerate(reversed(units)):
        y = keras.layers.Dense(u, activation=cfg.activation, kernel_regularizer=regularizer(cfg), name=f"dec{i + 1}")(y)
    y = keras.layers.Dense(h * w * c, activation="sigmoid", dtype="float32", name="dec_out")(y)
    y = keras.layers.Reshape((h, w, c), name="reconstruction")(y)
    return keras.Model(z, y, name="decoder")(code)


@register(
    "conv_autoencoder",
    options={"filters": [32, 64], "latent": 32, "upsample": "upsampling"},
    head=False,
)
def conv_autoencoder(x: keras.KerasTensor, cfg: ModelConfig) -> keras.KerasTensor:
    """Conv/max-pool stages down to a ``latent``-sized Dense code, the mirror image up."""
    o = _opts(cfg)
    filters = [int(f) for f in o["filters"]]
    latent = int(o["latent"])
    _positive("filters", filters, cfg.name)
    _positive("latent", [latent], cfg.name)
    if o["upsample"] not in UPSAMPLE:
        raise ConfigError(f"model.options.upsample = {o['upsample']!r} is not allowed; choose one of {', '.join(map(repr, UPSAMPLE))}")
    _, _, channels = _shape(x)
    x = _encoder_convs(x, filters, cfg, cfg.name)
    code_shape = _shape(x)
    x = keras.layers.Flatten(name="flatten")(x)
    code = keras.layers.Dense(latent, name="latent")(x)
    return _conv_decoder(latent, code_shape, filters, channels, o["upsample"], cfg)(code)


@register(
    "conv_vae",
    options={"filters": [32, 64], "latent": 8, "dense": 128, "beta": 1.0, "upsample": "transpose"},
    head=False,
)
def conv_vae(x: keras.KerasTensor, cfg: ModelConfig) -> keras.KerasTensor:
    """Variational autoencoder: conv encoder to ``z_mean`` / ``z_log_var``, the reparameterised
    sample (the mean at inference), the KL term (times ``beta``) added by the Sampling layer."""
    from tfcnn.models.autoencoder_layers import Sampling

    o = _opts(cfg)
    filters = [int(f) for f in o["filters"]]
    latent, dense, beta = int(o["latent"]), int(o["dense"]), float(o["beta"])
    _positive("filters", filters, cfg.name)
    _positive("latent", [latent], cfg.name)
    if dense < 0 or beta < 0:
        raise ConfigError(f"{cfg.name}: model.options.dense and beta must be >= 0, got {dense} and {beta}")
    if o["upsample"] not in UPSAMPLE:
        raise ConfigError(f"model.options.upsample = {o['upsample']!r} is not allowed; choose one of {', '.join(map(repr, UPSAMPLE))}")
    h, w, channels = _shape(x)
    x = _encoder_convs(x, filters, cfg, cfg.name)
    code_shape = _shape(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if dense:
        x = keras.layers.Dense(dense, activation=cfg.activation, name="enc_dense")(x)
    mean = keras.layers.Dense(latent, name="z_mean")(x)
    log_var = keras.layers.Dense(latent, name="z_log_var")(x)
    z = Sampling(beta=beta, pixels=h * w * channels, name="sampling")([mean, log_var])
    return _conv_decoder(latent, code_shape, filters, channels, o["upsample"], cfg)(z)
