"""The one serving wrapper every artifact is converted from.

uint8 RGB [N, H, W, 3] -> float32 -> (BT.601 luma in-graph when the model has 1 channel) ->
the trained model (its Normalization layer holds mean/std) -> the task's outputs (softmax
probabilities, class id and label for classification; see ``tfcnn/tasks/``). Keeping a single
preprocessing function means SavedModel, ONNX, TFLite and CoreML cannot drift apart; only the
input dtype and batch dimension differ per target.

Endpoints are written with keras.export.ExportArchive rather than a bare tf.Module: the archive
tracks Keras 3 variables as plain tf.Variables, which the TFLite converter can freeze into
constants (a tf.Module holding the model leaves READ_VARIABLE ops that break int8 calibration).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from tfcnn.tasks import get_task

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, the contract's grayscale rule


@dataclass(frozen=True)
class Geometry:
    """The model's fixed input size and channel count (the wrapper always takes 3 channels)."""

    height: int
    width: int
    model_channels: int


def geometry_of(model) -> Geometry:
    shape = model.inputs[0].shape
    h, w, c = (int(d) for d in shape[1:])
    if c not in (1, 3):
        raise ValueError(f"model input has {c} channels; the export contract supports 1 (grayscale) or 3 (RGB)")
    return Geometry(h, w, c)


def model_input_fn(geometry: Geometry) -> Callable[[tf.Tensor], tf.Tensor]:
    """float32 RGB pixels in 0..255 -> the pixels the model takes (BT.601 luma for 1-channel models)."""
    gray = tf.constant(np.asarray(GRAY_WEIGHTS, np.float32).reshape(1, 1, 3, 1))

    def fn(rgb: tf.Tensor) -> tf.Tensor:
        if geometry.model_channels == 1:
            # A 1x1 convolution rather than a weighted reduce_sum: it maps onto one CONV_2D in
            # TFLite, which full-integer quantization handles per channel.
            return tf.nn.conv2d(rgb, gray, strides=1, padding="VALID")
        return rgb

    return fn


def model_fn(model, geometry: Geometry) -> Callable[[tf.Tensor], tf.Tensor]:
    """float32 RGB pixels in 0..255 -> the model's raw outputs, the core shared by every endpoint."""
    to_model = model_input_fn(geometry)

    def fn(rgb: tf.Tensor) -> tf.Tensor:
        return model(to_model(rgb), training=False)

    return fn


def _task_outputs(model, geometry: Geometry, task) -> Callable[..., dict[str, tf.Tensor]]:
    """float32 RGB -> the task's named outputs; the task also gets the pixels the model saw
    (a reconstruction task compares them with its output for the anomaly score)."""
    to_model = model_input_fn(geometry)

    def fn(rgb: tf.Tensor, *args) -> dict[str, tf.Tensor]:
        x = to_model(rgb)
        outputs = task.forward(model, x)
        if args:
            return task.serving_outputs(outputs, *args, inputs=x)
        return task.mobile_outputs(outputs, inputs=x)

    return fn


def _check_images(image: tf.Tensor, g: Geometry) -> tf.Tensor:
    """Fail in-graph with a readable message: a wrong H/W would otherwise run silently (GAP hides it)."""
    expected = tf.constant([g.height, g.width, 3], tf.int32)
    check = tf.debugging.assert_equal(
        tf.shape(image)[1:],
        expected,
        message=f"image must be uint8 RGB with shape [N, {g.height}, {g.width}, 3]",
    )
    with tf.control_dependencies([check]):
        return tf.identity(image)


def label_table(labels_file: Path) -> tf.lookup.StaticHashTable:
    """class id -> label string, read from the labels.txt that becomes the SavedModel asset."""
    init = tf.lookup.TextFileInitializer(
        str(labels_file),
        key_dtype=tf.int64,
        key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
        value_dtype=tf.string,
        value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
    )
    return tf.lookup.StaticHashTable(init, default_value="")


def _over_black(img: tf.Tensor) -> tf.Tensor:
    """Decoded [H, W, 1|2|3|4] uint8 -> int32 RGB, straight alpha composited over black with the
    contract's round(c * a / 255) (tfcnn.data.images does the same); grey is replicated."""
    x = tf.cast(img, tf.int32)
    has_alpha = tf.equal(tf.shape(x)[-1] % 2, 0)  # grey + alpha or RGBA
    alpha = tf.cond(has_alpha, lambda: x[..., -1:], lambda: tf.fill(tf.shape(x[..., :1]), 255))
    colour = tf.cond(has_alpha, lambda: x[..., :-1], lambda: x) * tf.ones([1, 1, 3], tf.int32)
    return (colour * alpha + 127) // 255


def _source_box(height: tf.Tensor, width: tf.Tensor, g: Geometry, fit: str) -> tuple[tf.Tensor, ...]:
    """(x0, y0, x1, y1) in float64: the whole image, or ImageOps.fit's centred box (the same maths
    as :func:`tfcnn.data.images.crop_box`)."""
    hs, ws = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    if fit == "stretch":
        zero = tf.constant(0.0, tf.float64)
        return zero, zero, ws, hs
    src, out = ws / hs, g.width / g.height
    crop_w = tf.where(tf.logical_and(src != out, src >= out), out * hs, ws)
    crop_h = tf.where(tf.logical_and(src != out, src < out), ws / out, hs)
    left, top = (ws - crop_w) * 0.5, (hs - crop_h) * 0.5
    return left, top, left + crop_w, top + crop_h


def _half_up(x: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)


def decode_image_bytes(g: Geometry, fit: str = "stretch") -> Callable[[tf.Tensor], tf.Tensor]:
    """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 RGB [H, W, 3], the contract's resize in TF ops.

    As :func:`tfcnn.data.images.load_image` (the reference the Android core matches to the bit):
    alpha over black, then the ``fit`` box resized with an antialiased triangle filter
    (``ScaleAndTranslate``, the kernel of Pillow's BILINEAR), horizontal pass first, each pass
    rounded half up to uint8. TF weighs in float32 where Pillow uses 22-bit fixed point, so about
    1% of values land one step away from the reference (never more). A plain bilinear
    ``tf.image.resize`` skips source pixels when it shrinks: up to 127 steps off on a 640x427 photo.
    """

    def axis_pass(img: tf.Tensor, size: tf.Tensor, scale: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
        return _half_up(
            tf.raw_ops.ScaleAndTranslate(
                images=img, size=size, scale=tf.cast(scale, tf.float32), translation=tf.cast(shift, tf.float32),
                kernel_type="triangle", antialias=True,
            )
        )

    def decode(data: tf.Tensor) -> tf.Tensor:
        img = _over_black(tf.io.decode_image(data, channels=0, expand_animations=False))
        shape = tf.shape(img)
        x0, y0, x1, y1 = _source_box(shape[0], shape[1], g, fit)
        sx, sy = g.width / (x1 - x0), g.height / (y1 - y0)
        one, zero = tf.constant(1.0, tf.float64), tf.constant(0.0, tf.float64)
        img = tf.cast(img, tf.float32)[None]
        img = axis_pass(img, tf.stack([shape[0], g.width]), tf.stack([one, sx]), tf.stack([zero, -x0 * sx]))
        img = axis_pass(img, tf.constant([g.height, g.width]), tf.stack([sy, one]), tf.stack([-y0 * sy, zero]))
        return tf.cast(img[0], tf.uint8)

    return decode


def serving_archive(model, labels_file: Path, task=None, fit: str = "stretch"):
    """Archive with `serving_default` (uint8 images) and `serving_bytes` (encoded images, resized
    with the contract's `fit`)."""
    import keras

    task = task or get_task("classification")
    g = geometry_of(model)
    named = _task_outputs(model, g, task)
    table = label_table(labels_file)

    def outputs(image: tf.Tensor) -> dict[str, tf.Tensor]:
        image = _check_images(image, g)
        return named(tf.cast(image, tf.float32), table.lookup)

    decode = decode_image_bytes(g, fit)

    def from_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([g.height, g.width, 3], tf.uint8))
        return outputs(images)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(table)
    archive.add_endpoint(
        "serving_default", outputs, [tf.TensorSpec([None, g.height, g.width, 3], tf.uint8, name="image")]
    )
    archive.add_endpoint("serving_bytes", from_bytes, [tf.TensorSpec([None], tf.string, name="image_bytes")])
    return archive


def mobile_archive(model, input_dtype: tf.DType, task=None):
    """Batch-1 archive for TFLite/CoreML conversion: only probabilities, no string ops.

    ``uint8`` input is the float TFLite variants' interface (cast in-graph); ``float32`` input
    (pixel values 0..255) feeds full-integer quantization, whose converter turns the input into
    uint8 itself, and CoreML, whose ImageType hands the model float pixels.
    """
    import keras

    task = task or get_task("classification")
    g = geometry_of(model)
    named = _task_outputs(model, g, task)

    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return named(tf.cast(image, tf.float32))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, [tf.TensorSpec([1, g.height, g.width, 3], input_dtype, name="image")])
    return archive


def to_rgb(images: np.ndarray) -> np.ndarray:
    """Data-set images (1 or 3 channels) as the contract's RGB uint8 (gray repeated to R=G=B)."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected NHWC images with 1 or 3 channels, got shape {images.shape}")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
