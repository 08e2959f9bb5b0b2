"""Training augmentation that moves box and mask labels with the image (detection, segmentation).

Why its own module: the classification augmenter (:mod:`tfcnn.data.augment`) changes only the
pixels, which is right for a class label but silently wrong for a box or a mask — a flipped
image with an unflipped box teaches the detector to look in the wrong place. Here the geometric
keys of ``data.augment`` (``flip``, ``vflip``, ``translate``, ``zoom``) become ONE affine map per
image, applied to the image (bilinear), to the mask (nearest, so class ids stay ids) and to the
boxes (the same map in normalised coordinates), so the three cannot disagree. Keys that cannot
move labels (:data:`tfcnn.data.boxes.UNMOVABLE_AUGMENTS`: rotate, shear, crops, policies,
erasing, cutout, mixup, cutmix) are refused with one ConfigError line; the photometric keys run
afterwards through the classification augmenter, unchanged.

The map, in normalised coordinates u (0..1 of height or width), per axis::

    u -> 1 - u                      if flipped (flip: x axis, vflip: y axis; probability 0.5 each)
    u -> s * (u - 0.5) + 0.5        zoom: content scaled by s ~ U[1 - zoom, 1 + zoom] about the centre
    u -> u + t                      translate: t ~ U[-translate, translate] per axis, fraction of the side

Boxes are mapped, then clipped to [0, 1]; an object keeps its row only if at least
:data:`MIN_VISIBLE` of its (mapped) area is still inside the image, else the row becomes PAD,
and kept rows are moved first (stable) so PAD rows stay last. Pixels that come from outside the
image are 0 (black image, background mask), like the classification augmenter's constant fill.

Seeding follows :mod:`tfcnn.data.augment`: a per-batch seed from ``tf.data.Dataset.random``,
each op's draws from ``fold(seed, SALT[name])``, no tf.Variable, nothing in Python at run time.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

from tfcnn.config import AugmentConfig
from tfcnn.data import augment_ops as ops
from tfcnn.data.augment import SALT, build_augmenter
from tfcnn.data.boxes import MOVABLE_AUGMENTS, PAD, UNMOVABLE_AUGMENTS, check_label_augments

MIN_VISIBLE = 0.25  # fraction of a box's area that must stay inside the image for the object to stay

# (uint8 images [B,H,W,C], labels float32 [B,M,5] | uint8 [B,H,W], seed int64[2]) -> (images, labels)
LabelledAugmenter = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class Affine:
    """One map per image: flips (bool [B]), zoom scale (float [B]), translation (float [B, 2] as ty, tx).

    `zoomed` / `shifted` say whether zoom / translate are on at all: when off, their terms are left
    out entirely, so a pure flip is exactly ``1 - u`` in float32.
    """

    hflip: tf.Tensor
    vflip: tf.Tensor
    scale: tf.Tensor
    shift: tf.Tensor
    zoomed: bool = False
    shifted: bool = False


def draw_affine(cfg: AugmentConfig, batch: tf.Tensor, seed: tf.Tensor) -> Affine:
    """The per-image maps of one batch from the batch seed (see the module docstring)."""
    off = tf.zeros([batch], tf.bool)
    hflip = ops.uniform([batch], ops.fold(seed, SALT["flip"])) < 0.5 if cfg.flip else off
    vflip = ops.uniform([batch], ops.fold(seed, SALT["vflip"])) < 0.5 if cfg.vflip else off
    if cfg.zoom:
        scale = ops.uniform([batch], ops.fold(seed, SALT["zoom"]), 1.0 - cfg.zoom, 1.0 + cfg.zoom)
    else:
        scale = tf.ones([batch])
    if cfg.translate:
        shift = ops.uniform([batch, 2], ops.fold(seed, SALT["translate"]), -cfg.translate, cfg.translate)
    else:
        shift = tf.zeros([batch, 2])
    return Affine(hflip, vflip, scale, shift, bool(cfg.zoom), bool(cfg.translate))


def _map_coord(u: tf.Tensor, flip: tf.Tensor, scale: tf.Tensor, shift: tf.Tensor, a: Affine) -> tf.Tensor:
    """Apply one axis of the map to normalised coordinates u [B, M] (flip/scale/shift [B])."""
    u = tf.where(flip[:, None], 1.0 - u, u)
    if a.zoomed:
        u = scale[:, None] * (u - 0.5) + 0.5
    if a.shifted:
        u = u + shift[:, None]
    return u


def transform_boxes(labels: tf.Tensor, a: Affine, min_visible: float = MIN_VISIBLE) -> tf.Tensor:
    """Padded box labels float32 [B, M, 5] under the per-image maps `a`, clipped, PAD rows last."""
    labels = tf.convert_to_tensor(labels, tf.float32)
    y0 = _map_coord(labels[..., 0], a.vflip, a.scale, a.shift[:, 0], a)
    y1 = _map_coord(labels[..., 2], a.vflip, a.scale, a.shift[:, 0], a)
    x0 = _map_coord(labels[..., 1], a.hflip, a.scale, a.shift[:, 1], a)
    x1 = _map_coord(labels[..., 3], a.hflip, a.scale, a.shift[:, 1], a)
    ymin, ymax = tf.minimum(y0, y1), tf.maximum(y0, y1)
    xmin, xmax = tf.minimum(x0, x1), tf.maximum(x0, x1)
    full = (ymax - ymin) * (xmax - xmin)
    cymin, cxmin = tf.clip_by_value(ymin, 0.0, 1.0), tf.clip_by_value(xmin, 0.0, 1.0)
    cymax, cxmax = tf.clip_by_value(ymax, 0.0, 1.0), tf.clip_by_value(xmax, 0.0, 1.0)
    inside = tf.maximum(cymax - cymin, 0.0) * tf.maximum(cxmax - cxmin, 0.0)
    keep = (labels[..., 4] >= 0) & (inside > 0) & (inside >= min_visible * full)
    moved = tf.stack([cymin, cxmin, cymax, cxmax, labels[..., 4]], axis=-1)
    out = tf.where(keep[..., None], moved, tf.fill(tf.shape(labels), PAD))
    order = tf.argsort(tf.cast(~keep, tf.int32), axis=1, stable=True)
    return tf.gather(out, order, batch_dims=1)


def _pixel_transforms(a: Affine, height: int, width: int) -> tf.Tensor:
    """[B, 8] ImageProjectiveTransform rows mapping output pixel (x, y) to input pixel coordinates.

    Pixel i covers [i, i + 1) of ``u * side``; its centre i + 0.5 is what is mapped back:
    ``i_in = f / s * (i_out + 0.5 - side / 2 - t * side) + side / 2 - 0.5`` (f = -1 when flipped).
    """

    def axis(flip: tf.Tensor, t: tf.Tensor, side: int) -> tuple[tf.Tensor, tf.Tensor]:
        f = tf.where(flip, -1.0, 1.0)
        gain = f / a.scale
        offset = gain * (0.5 - side / 2.0 - t * side) + side / 2.0 - 0.5
        return gain, offset

    ax, bx = axis(a.hflip, a.shift[:, 1], width)
    ay, by = axis(a.vflip, a.shift[:, 0], height)
    z = tf.zeros_like(ax)
    return tf.stack([ax, z, bx, z, ay, by, z, z], axis=1)


def transform_images(images: tf.Tensor, a: Affine, interpolation: str = "BILINEAR") -> tf.Tensor:
    """float32 [B, H, W, C] images (or masks, with "NEAREST") under the maps `a`; outside is 0."""
    shape = tf.shape(images)
    h, w = images.shape[1], images.shape[2]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=_pixel_transforms(a, h, w),
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )


def build_box_augmenter(
    cfg: AugmentConfig, kind: str, fill: list[float] | None = None, channels: int | None = None
) -> LabelledAugmenter | None:
    """The per-batch (images, labels) augmentation for "boxes" / "masks" labels, or None when off.

    Refuses (ConfigError) every key in UNMOVABLE_AUGMENTS and colour keys on 1-channel data.
    """
    if kind not in ("boxes", "masks"):
        raise ValueError(f"build_box_augmenter: kind must be 'boxes' or 'masks', got {kind!r}")
    check_label_augments(cfg, kind)
    photo_cfg = dataclasses.replace(cfg, **{k: type(getattr(cfg, k))() for k in (*MOVABLE_AUGMENTS, *UNMOVABLE_AUGMENTS)})
    photometric = build_augmenter(photo_cfg, fill=fill, channels=channels)
    geometric = any(getattr(cfg, k) for k in MOVABLE_AUGMENTS)
    if not geometric and photometric is None:
        return None

    def augment(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if geometric:
            a = draw_affine(cfg, tf.shape(images)[0], seed)
            x = transform_images(tf.cast(images, tf.float32), a, "BILINEAR")
            images = tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)
            if kind == "boxes":
                labels = transform_boxes(labels, a)
            else:
                m = transform_images(tf.cast(labels, tf.float32)[..., None], a, "NEAREST")
                labels = tf.cast(tf.round(m[..., 0]), tf.uint8)
        if photometric is not None:
            images = photometric(images, seed)
        return images, labels

    return augment


def augment_labelled_dataset(ds: tf.data.Dataset, augment: LabelledAugmenter, seed: int) -> tf.data.Dataset:
    """Apply `augment` to every batch of (images, labels) with a per-batch, per-epoch seed."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    base = tf.constant(seed, tf.int64)

    def apply(batch, r):
        images, labels = batch
        out_images, out_labels = augment(images, labels, tf.stack([base, r]))
        out_images.set_shape(images.shape)  # the projective transform loses the static H, W, C
        out_labels.set_shape(labels.shape)
        return out_images, out_labels

    return tf.data.Dataset.zip((ds, seeds)).map(apply, num_parallel_calls=tf.data.AUTOTUNE)
