"""Semantic segmentation: a class per pixel (0 background, c + 1 for object class c), through
the one chain.

What differs from classification, behind the :class:`~tfcnn.tasks.base.Task` interface:

* **labels**: the data bundle carries ``uint8 [H, W]`` masks (:mod:`tfcnn.data.scenes`), moved
  with the image by the mask-aware augmentation; the engines train on them as they are;
* **loss**: soft Dice, cross-entropy, their sum or focal, with optional class weights
  (:mod:`tfcnn.tasks.segmentation_losses`); history logs mean IoU and pixel accuracy;
* **outputs**: every format returns ``class_probabilities [N, H, W, K + 1]`` (softmax) and
  ``mask [N, H, W]`` (their argmax), computed in-graph;
* **test-time flip** (``segmentation.test_time_flip``): :meth:`Segmentation.forward` averages
  the logits of the image and of its mirror image (mirrored back) in every artifact and in the
  Keras reference, so evaluation, export and verify all see the same model; two network passes
  per image;
* **verify**: mean IoU and foreground Dice per format on the test images next to Keras', and
  pixel agreement of the argmax mask (>= 99.5% float formats, >= 98% int8).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import numpy as np

from tfcnn.errors import ConfigError, ExportError
from tfcnn.tasks.base import TASKS, Task, latency_text

SEGMENTERS = ("unet",)
PROBABILITIES = "class_probabilities"
MASK = "mask"
OUTPUTS = (PROBABILITIES, MASK)


class Segmentation(Task):
    name = "segmentation"
    metric_names = ("mean_iou", "pixel_accuracy")
    reference_name = "mean_iou"
    limit_keys = ("min_pixel_agreement", "max_miou_drop")
    label_kind = "masks"
    # Full-integer TFLite keeps the outputs float32: the contract says float32 probabilities, and
    # MediaPipe's ImageSegmenter cannot read uint8 probabilities beside the int32 mask (its
    # dequantization step refuses the int32 tensor). Softmax and argmax are fused into the
    # output tensors, so there is no tail scope to name.
    int8_float_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        from tfcnn.config import SegmentationConfig

        self.seg = SegmentationConfig()
        self.num_outputs = 0  # K + 1, known once configured with the data (check_model) or the labels (export)

    # ------------------------------------------------------------- configuration
    def check_config(self, cfg: Any) -> None:
        if cfg.model.name not in SEGMENTERS:
            raise ConfigError(
                f"model.name = {cfg.model.name!r} does not segment; task = 'segmentation' trains {' or '.join(SEGMENTERS)}"
            )
        if cfg.train.label_smoothing:
            raise ConfigError("train.label_smoothing applies to classifiers; remove it for task = 'segmentation'")
        weights = cfg.segmentation.class_weights
        if weights is not None and (not weights or any(not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0) for w in weights)):
            raise ConfigError(f"segmentation.class_weights = {weights!r}: give one positive finite weight per class, background first")

    def configure(self, cfg: Any, run: Any = None) -> "Segmentation":
        self.check_config(cfg)
        task = copy.copy(self)
        task.seg = cfg.segmentation
        return task

    def _settings(self) -> dict[str, Any]:
        s = self.seg
        return {"loss": s.loss, "class_weights": s.class_weights, "dice_smooth": s.dice_smooth, "focal_gamma": s.focal_gamma}

    # ------------------------------------------------------------- train
    def loss_fn(self, num_outputs: int, label_smoothing: float = 0.0, *, from_logits: bool = True, **_: Any):
        from tfcnn.tasks import segmentation_losses as sl

        settings = self._settings()
        return lambda y, p: sl.segmentation_loss(y, p, settings)

    def keras_loss(self, label_smoothing: float = 0.0, **_: Any):
        from tfcnn.tasks import segmentation_losses as sl

        return sl.SegmentationLoss(self._settings())

    def keras_metrics(self, label_smoothing: float = 0.0, **_: Any) -> list:
        """Mean IoU over all output classes (background included) and pixel accuracy, per epoch."""
        import keras

        if not self.num_outputs:
            raise ConfigError("the segmentation task was not configured with the model's class count (check_model)")
        return [
            keras.metrics.MeanIoU(num_classes=self.num_outputs, sparse_y_true=True, sparse_y_pred=False, name="mean_iou"),
            keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy"),
        ]

    def check_model(self, model, info: Any) -> None:
        want = (*tuple(info.input_shape[:2]), info.num_classes + 1)
        got = tuple(model.outputs[0].shape[1:])
        if got != want:
            raise ConfigError(
                f"a segmentation model for {info.num_classes} classes must output {want} (background + one per class, "
                f"at the input's size), but it outputs {got}"
            )
        self.num_outputs = info.num_classes + 1

    def check_export(self, model, labels: Sequence[str]) -> None:
        got = tuple(model.outputs[0].shape[1:])
        want = (*tuple(model.inputs[0].shape[1:3]), len(labels) + 1)
        if got != want:
            raise ExportError(f"model outputs {got}, not {want} (background + {len(labels)} classes at the input size)")

    # ------------------------------------------------------------- evaluate / verify
    def forward(self, model, x):
        """The logits; with ``test_time_flip`` the mean of the image's and its mirror image's
        (mirrored back along the width axis), in float32.

        The mirror is a strided slice with step -1 (TFLite STRIDED_SLICE, ONNX Slice, CoreML
        slice_by_index), not tf.reverse: LiteRT's full-integer REVERSE_V2 scrambled the image
        (layer SNR -0.3 dB in the int8 quantization debugger, 7 points of mean IoU lost)."""
        import tensorflow as tf

        logits = tf.cast(model(x, training=False), tf.float32)
        if not self.seg.test_time_flip:
            return logits
        with tf.name_scope("test_time_flip"):
            mirrored = tf.cast(model(x[:, :, ::-1], training=False), tf.float32)
            return (logits + mirrored[:, :, ::-1]) * 0.5

    def probabilities(self, model, images: np.ndarray, batch_size: int = 32):
        """Softmax probabilities ``float32 [N, H, W, K + 1]`` of the Keras model, batch by batch
        (through :meth:`forward`, so a test-time flip is in them too)."""
        import tensorflow as tf

        out = []
        for start in range(0, len(images), batch_size):
            logits = self.forward(model, tf.constant(images[start : start + batch_size].astype(np.float32)))
            out.append(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1).numpy())
        return np.concatenate(out, 0) if out else np.zeros((0,), np.float32)

    def reference(self, model, images: np.ndarray) -> dict[str, np.ndarray]:
        probs = self.probabilities(model, images)
        return {PROBABILITIES: probs, MASK: probs.argmax(-1).astype(np.int32)}

    def reference_score(self, reference: Any, labels: np.ndarray) -> float:
        from tfcnn.tasks.segmentation_metrics import confusion, mean_iou

        k = reference[PROBABILITIES].shape[-1]
        return float(mean_iou(confusion(reference[MASK], np.asarray(labels), k)))

    def output_text(self, labels: Sequence[str]) -> str:
        return (
            f"class_probabilities: softmax over background + {len(labels)} classes per pixel (index 0 background, "
            "i + 1 = labels.txt line i); mask: their argmax"
        )

    def describe(self, labels: Sequence[str], model_name: str) -> str:
        return f"{len(labels)}-class semantic segmenter ({model_name})"

    def card_limitations(self) -> list[str]:
        return [
            "Index 0 of class_probabilities is the background, which labels.txt does not list: class i + 1 is labels.txt line i.",
            "Masks are at the model's input size, i.e. of the whole image resized to it: resize them back (nearest) to overlay.",
            "Quantized variants change probabilities slightly and can flip pixels at class borders; verification.json "
            "reports pixel agreement and mean IoU per format.",
        ] + ([
            "Test-time flip is on (segmentation.test_time_flip): every artifact runs the network twice per image (it and "
            "its mirror image, logits averaged), so inference costs about twice a single pass; a mirrored image gets "
            "exactly the mirrored mask."
        ] if self.seg.test_time_flip else [])

    def output_contract(self, labels: Sequence[str]) -> dict[str, Any]:
        return {
            "kind": "segmentation",
            "tensors": list(OUTPUTS),
            PROBABILITIES: f"float32 [N, H, W, {len(labels) + 1}]: per-pixel softmax; index 0 background, i + 1 = labels.txt line i",
            MASK: "int32 [N, H, W]: argmax of class_probabilities (0 background)",
            "background_index": 0,
            "num_classes_with_background": len(labels) + 1,
            "test_time_flip": bool(self.seg.test_time_flip),
        }

    def _outputs(self, outputs) -> dict:
        import tensorflow as tf

        with tf.name_scope("segmentation_postprocess"):
            probs = tf.nn.softmax(tf.cast(outputs, tf.float32), axis=-1)
            return {PROBABILITIES: probs, MASK: tf.argmax(probs, axis=-1, output_type=tf.int32)}

    def mobile_outputs(self, outputs, inputs=None) -> dict:
        return self._outputs(outputs)

    def serving_outputs(self, outputs, label_lookup, inputs=None) -> dict:
        return self._outputs(outputs)

    def compare(self, outputs: Any, reference: Any, labels: np.ndarray) -> dict[str, float]:
        """Pixel agreement of the argmax masks with Keras', max |dp|, and the format's mean IoU and
        foreground Dice against the true masks."""
        from tfcnn.tasks.segmentation_metrics import confusion, mean_dice, mean_iou, pixel_agreement

        if not isinstance(outputs, dict) or PROBABILITIES not in outputs:
            got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
            raise ValueError(f"artifact returned {got}; a segmenter must return {', '.join(OUTPUTS)}")
        ref_p = reference[PROBABILITIES]
        p = np.asarray(outputs[PROBABILITIES], np.float32)
        if p.shape != ref_p.shape:
            if p.size != ref_p.size:
                raise ValueError(f"artifact's {PROBABILITIES} has shape {p.shape}, expected {ref_p.shape}")
            p = p.reshape(ref_p.shape)
        if not np.all(np.isfinite(p)):
            return {"pixel_agreement": math.nan, "mean_iou": math.nan, "mean_dice": math.nan, "max_abs_diff": math.nan, "non_finite": True}
        mask = np.asarray(outputs.get(MASK, p.argmax(-1))).reshape(ref_p.shape[:-1]).astype(np.int64)
        k = ref_p.shape[-1]
        cm = confusion(mask, np.asarray(labels), k)
        return {
            "pixel_agreement": round(float(pixel_agreement(mask, reference[MASK])), 6),
            "mask_is_argmax": bool(np.mean(mask == p.argmax(-1)) >= 0.999),
            "max_abs_diff": float(np.max(np.abs(p - ref_p))) if p.size else 0.0,
            "mean_iou": round(float(mean_iou(cm)), 6),
            "mean_dice": round(float(mean_dice(cm)), 6),
        }

    def format_limits(self, classifier_limits: dict[str, float]) -> dict[str, float]:
        """>= 99.5% pixel agreement and at most 0.5 points of mean IoU lost for float formats;
        >= 98% and 2 points for int8 (full-integer or dynamic-range weights)."""
        if "max_accuracy_drop" in classifier_limits or classifier_limits.get("agreement", 1.0) <= 0.99:
            return {"min_pixel_agreement": 0.98, "max_miou_drop": 0.02}
        return {"min_pixel_agreement": 0.995, "max_miou_drop": 0.005}

    def failures(self, row: dict[str, Any], limits: dict[str, float], reference_score: float) -> list[str]:
        fails = []
        if row.get("non_finite"):
            fails.append("the artifact returned non-finite values (NaN or infinity)")
        v = row.get("pixel_agreement")
        if "min_pixel_agreement" in limits and not (v is not None and v >= limits["min_pixel_agreement"]):
            fails.append(f"pixel agreement with Keras {_pct(v)}% < {100 * limits['min_pixel_agreement']:.2f}%")
        if row.get("mask_is_argmax") is False:
            fails.append("the mask output is not the argmax of class_probabilities")
        v = row.get("mean_iou")
        drop = reference_score - v if v is not None else math.nan
        if "max_miou_drop" in limits and not drop <= limits["max_miou_drop"] + 1e-12:
            fails.append(f"mean IoU {_pct(v)} is {_pct(drop)} points below Keras' (limit {100 * limits['max_miou_drop']:.2f})")
        return fails

    def verify_line(self, row: dict[str, Any]) -> str:
        return (
            f"mean IoU {_pct(row.get('mean_iou'))}, Dice {_pct(row.get('mean_dice'))}, pixel agreement "
            f"{_pct(row.get('pixel_agreement'))}%, max|dp| {row.get('max_abs_diff', math.nan):.2e}, {latency_text(row)}"
        )

    def verify_columns(self) -> list[tuple[str, str, str, float]]:
        return [("mean IoU", "mean_iou", ".2f", 100), ("fg Dice", "mean_dice", ".2f", 100),
                ("pixel agreement", "pixel_agreement", ".2f", 100), ("max abs diff", "max_abs_diff", ".2e", 1)]


def _pct(v: Any) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"


TASKS.register("segmentation", Segmentation())
