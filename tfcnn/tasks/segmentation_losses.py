"""Segmentation losses on per-pixel logits, per image, as the engines want them.

Shapes: ``logits [B, H, W, C]`` with ``C = K + 1`` (channel 0 background, ``c + 1`` object class
``c``, softmax over the last axis), ``masks [B, H, W]`` (or ``[B, H, W, 1]``) integer class ids in
``0..C-1``. Every loss returns one value per image, ``[B]``: the tape engine weights and averages
per-example losses itself, and the Keras loss class reduces them as every Keras loss does.

Why these losses:

* **Cross-entropy** (UNet, Ronneberger et al. 2015) is the per-pixel classification loss; its
  gradient is well behaved from the first step. But it is a *mean over pixels*: on a 96x96 scene
  where objects cover 10% of the image, predicting "background everywhere" already scores 90%
  pixel accuracy, and rare classes barely move the loss. ``class_weights`` (one per output
  class, background first) multiply each pixel's term by the weight of its true class (UNet's
  weight map, per class) and the mean is still over *all* pixels, the Keras ``class_weight``
  convention: weights of 1 are the plain loss, and doubling a class' weight doubles exactly its
  pixels' share.
* **Soft Dice** (Milletari et al. 2016, V-Net) optimises the overlap measure itself:
  ``1 - mean_c (2 sum(p y) + s) / (sum(p) + sum(y) + s)`` per image on softmax probabilities
  ``p`` and one-hot masks ``y``. Each class is normalised by its own size, so a 100-pixel object
  counts as much as the background: an all-background prediction of an image holding 100
  object pixels has foreground Dice 0 (loss 1) although its pixel accuracy is 99.96% on 512x512.
  As the probabilities saturate to one-hot it equals the hard Dice the evaluation reports
  (with ``smooth = 0``). ``smooth`` keeps the ratio finite and smooth for classes absent from an
  image (absent from both prediction and mask: Dice ~1, i.e. nothing to fix). ``classes``:
  "foreground" (default; background is the easy majority and would dilute the mean, as in
  nnU-Net) or "all".
* **Dice + CE** (``dice_ce``; Isensee et al. 2021, nnU-Net): CE's stable gradients early, Dice's
  insensitivity to class imbalance; the usual default.
* **Focal** (Lin et al. 2017), softmax form ``-(1 - p_t) ** gamma log p_t``: CE with the
  well-classified (mostly background) pixels down-weighted.

TensorFlow / Keras are imported inside functions (``import tfcnn.tasks`` stays light); the Keras
loss class is built and registered (``package="tfcnn"``) on first use, once per process.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from tfcnn.errors import ConfigError

LOSSES = ("dice", "ce", "dice_ce", "focal")
DICE_CLASSES = ("foreground", "all")
_SETTINGS_FIELDS = ("loss", "class_weights", "dice_smooth", "focal_gamma")
DEFAULT_SETTINGS: dict[str, Any] = {"loss": "dice_ce", "class_weights": None, "dice_smooth": 1.0, "focal_gamma": 2.0}


# --------------------------------------------------------------------------- helpers


def _prepare(masks: Any, logits: Any) -> tuple[Any, Any]:
    """(int32 masks [B, H, W], float32 logits [B, H, W, C]); a trailing mask axis of 1 is dropped."""
    import tensorflow as tf

    logits = tf.cast(logits, tf.float32)
    masks = tf.convert_to_tensor(masks)
    if masks.shape.rank == 4 and masks.shape[-1] == 1:
        masks = tf.squeeze(masks, -1)
    if masks.shape.rank is not None and masks.shape.rank != 3:
        raise ValueError(f"segmentation masks must be [B, H, W] class ids, got shape {masks.shape}")
    if logits.shape.rank != 4:
        raise ValueError(f"segmentation logits must be [B, H, W, C], got shape {logits.shape}")
    return tf.cast(masks, tf.int32), logits


def _weights(class_weights: Any, num_classes: int) -> list[float] | None:
    """`class_weights` checked: one finite non-negative number per output class, not all zero."""
    if class_weights is None:
        return None
    values = [float(w) for w in class_weights]
    if len(values) != num_classes:
        raise ConfigError(
            f"segmentation.class_weights has {len(values)} entries, the model has {num_classes} output classes "
            f"(background first); give one weight per class"
        )
    if any(not math.isfinite(w) or w < 0 for w in values) or not any(values):
        raise ConfigError(f"segmentation.class_weights = {values} must be finite, >= 0 and not all 0")
    return values


def _pixel_weights(masks: Any, class_weights: list[float] | None) -> Any:
    import tensorflow as tf

    if class_weights is None:
        return None
    return tf.gather(tf.constant(class_weights, tf.float32), masks)


# --------------------------------------------------------------------------- losses


def soft_dice(
    masks: Any, logits: Any, *, classes: str = "foreground", smooth: float = 1.0, class_weights: Any = None
) -> Any:
    """Soft Dice coefficient per image ``[B]`` in [0, 1]: the (``class_weights``-weighted) mean
    over ``classes`` ("foreground": 1..C-1, or "all") of ``(2 sum(p y) + s) / (sum(p) + sum(y) + s)``.
    A class absent from the mask and predicted nowhere scores ~1 with ``smooth > 0`` (exactly 0/0
    counts as 1 with ``smooth = 0``, but any predicted mass on an absent class then scores 0)."""
    import tensorflow as tf

    if classes not in DICE_CLASSES:
        raise ValueError(f"dice classes {classes!r} is not one of {', '.join(DICE_CLASSES)}")
    if not math.isfinite(float(smooth)) or float(smooth) < 0:
        raise ConfigError(f"segmentation.dice_smooth = {smooth!r} must be a finite number >= 0")
    masks, logits = _prepare(masks, logits)
    num_classes = int(logits.shape[-1])
    weights = _weights(class_weights, num_classes)
    p = tf.nn.softmax(logits, axis=-1)
    y = tf.one_hot(masks, num_classes, dtype=tf.float32)
    intersection = tf.reduce_sum(p * y, axis=[1, 2])  # [B, C]
    total = tf.reduce_sum(p, axis=[1, 2]) + tf.reduce_sum(y, axis=[1, 2])
    s = float(smooth)
    denominator = total + s
    # safe division: 0/0 (absent class, smooth 0) is 1, and the untaken branch stays finite so
    # its gradient does not poison the taken one
    safe = tf.where(denominator > 0, denominator, 1.0)
    dice = tf.where(denominator > 0, (2.0 * intersection + s) / safe, 1.0)
    first = 1 if classes == "foreground" else 0
    if num_classes - first < 1:
        raise ValueError("soft Dice over the foreground needs at least one object class (C >= 2)")
    dice = dice[:, first:]
    if weights is None:
        return tf.reduce_mean(dice, axis=-1)
    if sum(weights[first:]) <= 0:
        raise ConfigError("segmentation.class_weights are all 0 on the classes Dice averages (the foreground)")
    w = tf.constant(weights[first:], tf.float32)
    return tf.reduce_sum(dice * w, axis=-1) / sum(weights[first:])


def soft_dice_loss(
    masks: Any, logits: Any, *, classes: str = "foreground", smooth: float = 1.0, class_weights: Any = None
) -> Any:
    """``1 - soft_dice`` per image ``[B]`` (V-Net's Dice loss; see the module docstring)."""
    return 1.0 - soft_dice(masks, logits, classes=classes, smooth=smooth, class_weights=class_weights)


def cross_entropy(masks: Any, logits: Any, class_weights: Any = None) -> Any:
    """Softmax cross-entropy per image ``[B]``: the mean over pixels of ``w[y] * -log p_y``
    (``w`` = ``class_weights`` per output class, background first; 1 without them)."""
    import tensorflow as tf

    masks, logits = _prepare(masks, logits)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=masks, logits=logits)  # [B, H, W]
    w = _pixel_weights(masks, _weights(class_weights, int(logits.shape[-1])))
    if w is not None:
        ce = ce * w
    return tf.reduce_mean(ce, axis=[1, 2])


def focal(masks: Any, logits: Any, gamma: float = 2.0, class_weights: Any = None) -> Any:
    """Softmax focal loss per image ``[B]``: the mean over pixels of
    ``w[y] * -(1 - p_y) ** gamma * log p_y`` (``gamma = 0``: :func:`cross_entropy`)."""
    import tensorflow as tf

    if not math.isfinite(float(gamma)) or float(gamma) < 0:
        raise ConfigError(f"segmentation.focal_gamma = {gamma!r} must be a finite number >= 0")
    masks, logits = _prepare(masks, logits)
    log_p = tf.nn.log_softmax(logits, axis=-1)
    log_pt = tf.reduce_sum(log_p * tf.one_hot(masks, int(logits.shape[-1]), dtype=tf.float32), axis=-1)
    loss = -log_pt
    if float(gamma) != 0.0:
        # 1 - p_t as -expm1(log p_t): exact near p_t = 1; floored since pow(0, gamma < 1) has an
        # infinite gradient
        loss = loss * tf.pow(tf.maximum(-tf.math.expm1(log_pt), 1e-12), float(gamma))
    w = _pixel_weights(masks, _weights(class_weights, int(logits.shape[-1])))
    if w is not None:
        loss = loss * w
    return tf.reduce_mean(loss, axis=[1, 2])


def hybrid(masks: Any, logits: Any, *, smooth: float = 1.0, class_weights: Any = None) -> Any:
    """Cross-entropy + foreground soft Dice loss per image ``[B]`` (nnU-Net's default)."""
    return cross_entropy(masks, logits, class_weights) + soft_dice_loss(
        masks, logits, classes="foreground", smooth=smooth, class_weights=class_weights
    )


# --------------------------------------------------------------------------- settings and dispatch


def settings_dict(settings: Any = None) -> dict[str, Any]:
    """The loss settings as plain JSON: from a dict (missing keys take the defaults; unknown ones
    are refused), an object with those attributes (a SegmentationConfig), or None (defaults)."""
    out = dict(DEFAULT_SETTINGS)
    if settings is None:
        return out
    if isinstance(settings, Mapping):
        unknown = sorted(set(settings) - set(_SETTINGS_FIELDS))
        if unknown:
            raise ConfigError(
                f"segmentation loss settings {', '.join(unknown)} unknown; allowed: {', '.join(_SETTINGS_FIELDS)}"
            )
        out.update({k: settings[k] for k in _SETTINGS_FIELDS if k in settings})
    else:
        out.update({k: getattr(settings, k) for k in _SETTINGS_FIELDS if hasattr(settings, k)})
    if out["loss"] not in LOSSES:
        raise ConfigError(f"segmentation.loss = {out['loss']!r} is not one of {', '.join(map(repr, LOSSES))}")
    if out["class_weights"] is not None:
        out["class_weights"] = [float(w) for w in out["class_weights"]]
    out["dice_smooth"] = float(out["dice_smooth"])
    out["focal_gamma"] = float(out["focal_gamma"])
    return out


def segmentation_loss(masks: Any, logits: Any, cfg: Any = None) -> Any:
    """The configured loss per image ``[B]``; `cfg` as for :func:`settings_dict` (``loss``:
    "dice", "ce", "dice_ce" or "focal"; ``class_weights``; ``dice_smooth``; ``focal_gamma``)."""
    s = settings_dict(cfg)
    kind, weights = s["loss"], s["class_weights"]
    if kind == "dice":
        return soft_dice_loss(masks, logits, smooth=s["dice_smooth"], class_weights=weights)
    if kind == "ce":
        return cross_entropy(masks, logits, weights)
    if kind == "focal":
        return focal(masks, logits, s["focal_gamma"], weights)
    return hybrid(masks, logits, smooth=s["dice_smooth"], class_weights=weights)


# --------------------------------------------------------------------------- Keras loss object

_CLASSES: dict[str, type] = {}


def loss_classes() -> dict[str, type]:
    """``{"segmentation": SegmentationLoss}``, built and registered with Keras' serialisation on
    first call (once per process: Keras refuses a second registration of a name). Call it (or
    touch ``segmentation_losses.SegmentationLoss``) before ``keras.saving.load_model(compile=True)``."""
    if _CLASSES:
        return _CLASSES
    import keras

    @keras.saving.register_keras_serializable(package="tfcnn")
    class SegmentationLoss(keras.losses.Loss):
        """:func:`segmentation_loss` as a Keras loss: ``SegmentationLoss(settings)``; its config
        holds the settings as plain JSON."""

        def __init__(self, settings: Any = None, name: str = "segmentation_loss", **kwargs: Any):
            super().__init__(name=name, **kwargs)
            self.settings = settings_dict(settings)

        def call(self, y_true: Any, y_pred: Any) -> Any:
            return segmentation_loss(y_true, y_pred, self.settings)

        def get_config(self) -> dict:
            return {**super().get_config(), "settings": dict(self.settings)}

    _CLASSES.update(segmentation=SegmentationLoss)
    return _CLASSES


def __getattr__(name: str) -> Any:
    """``segmentation_losses.SegmentationLoss``: the class, built on first access (PEP 562) so
    that importing this module does not import Keras."""
    if name == "SegmentationLoss":
        return loss_classes()["segmentation"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def segmentation_keras_loss(settings: Any = None) -> Any:
    """A ``SegmentationLoss`` for ``model.compile`` on a segmentation model."""
    return loss_classes()["segmentation"](settings)
