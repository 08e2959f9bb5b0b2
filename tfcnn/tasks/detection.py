"""Object detection: boxes with class ids and scores, from a one-stage anchor detector
(``retinanet``) or a single-object localiser (``localizer``), through the one chain.

What differs from classification, all behind the :class:`~tfcnn.tasks.base.Task` interface:

* **labels**: the data bundle carries padded ``float32 [M, 5]`` box rows per image
  (:mod:`tfcnn.data.boxes`); :meth:`Detection.feed` turns them into the model's targets inside
  tf.data: per-anchor encoded offsets and classes (IoU assignment with an ignore band,
  :mod:`tfcnn.tasks.box_coding`) or the first object's box for the localiser;
* **loss**: sigmoid focal loss + ``box_weight`` x (smooth-L1, IoU or GIoU) for the detector,
  softmax cross-entropy over the classes plus "no object" + the box term for the localiser
  (:mod:`tfcnn.tasks.detection_losses`); history logs both parts;
* **inference**: decoding, score threshold, per-class NMS and top-N run in TensorFlow
  (:mod:`tfcnn.tasks.postprocess`) — the same function evaluation calls and every exported
  graph contains, so no format post-processes differently;
* **verify**: mAP@0.5 and mAP@[.5:.95] per format on the test scenes next to Keras', and box
  agreement (a format's detection matched to Keras' at IoU >= 0.9 with the same class).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import numpy as np

from tfcnn.errors import ConfigError, ExportError
from tfcnn.tasks.base import TASKS, Task, latency_text
from tfcnn.tasks.postprocess import SCOPE as POSTPROCESS_SCOPE

# model.name -> how its raw output is read: per-anchor offsets + logits, or one box + K+1 logits
DETECTORS = {"retinanet": "anchors", "localizer": "single"}
OUTPUTS = ("boxes", "classes", "scores", "num_detections")
# Box agreement compares the detections an app would show, not the low-score tail (whose
# order among near-equal scores legitimately differs between float and quantized formats).
AGREEMENT_FLOOR = 0.3


def image_size(cfg: Any) -> tuple[int, int]:
    """The fixed input size the anchors are laid on: ``data.image_size``, else the generated
    scenes' canvas (``data.scenes.size``) for the scene sources; other sources must say it."""
    if cfg.data.image_size:
        return int(cfg.data.image_size[0]), int(cfg.data.image_size[1])
    kind = cfg.data.source.partition(":")[0]
    if kind in ("fashion_scenes", "shapes"):
        return int(cfg.data.scenes.size), int(cfg.data.scenes.size)
    raise ConfigError(
        f"task = 'detection' needs a fixed input size for its anchors, and data.source = {cfg.data.source!r} "
        "does not fix one; set data.image_size = [height, width]"
    )


class Detection(Task):
    name = "detection"
    metric_names = ("class_loss", "box_loss")
    reference_name = "map_50"
    limit_keys = ("max_map50_drop", "max_map_drop", "min_box_agreement")
    label_kind = "boxes"
    # Full-integer TFLite: int8 model, float decoding / NMS / outputs, and a float final concat
    # (box offsets and class logits would share one int8 scale).
    ANCHOR_FLOAT_NAMES = (f"{POSTPROCESS_SCOPE}/", "/detections", "/localization")

    def __init__(self) -> None:
        from tfcnn.config import DetectionConfig

        self.det = DetectionConfig()
        self.kind = "anchors"
        self.model_name = "retinanet"
        self.height = self.width = 0
        self.spec: Any = None
        self.anchors: np.ndarray | None = None

    @property
    def int8_float_names(self) -> tuple[str, ...]:  # type: ignore[override]
        """The anchor detector's float tail; the localiser's class logits stay float too.

        Measured: the localiser's sigmoid box (fixed int8 scale 1/256 on [0, 1]) meets the class
        logits in one concat, and the quantizer gave the logits that same [0, 1] range even with
        the concat float, so every logit above 1 was clipped and mAP@0.5 fell 89.4 -> 45.0. The
        class logits are one 128 x (K + 1) Dense layer; float costs nothing measurable."""
        if self.kind == "single":
            return (*self.ANCHOR_FLOAT_NAMES, "/class_logits", "/box_")
        return self.ANCHOR_FLOAT_NAMES

    # ------------------------------------------------------------- configuration
    def check_config(self, cfg: Any) -> None:
        """No-I/O checks of a detection config (the "task" check of validate)."""
        if cfg.model.name not in DETECTORS:
            raise ConfigError(
                f"model.name = {cfg.model.name!r} is not a detector; task = 'detection' trains {' or '.join(DETECTORS)}"
            )
        if cfg.train.label_smoothing:
            raise ConfigError("train.label_smoothing applies to classifiers; remove it for task = 'detection'")
        image_size(cfg)

    def configure(self, cfg: Any, run: Any = None) -> "Detection":
        """A copy with the run's detection settings, the detector kind and (for anchor models)
        the anchors of the model's options at the input size."""
        self.check_config(cfg)
        task = copy.copy(self)
        task.det = cfg.detection
        task.model_name = cfg.model.name
        task.kind = DETECTORS[cfg.model.name]
        task.height, task.width = image_size(cfg)
        if task.kind == "anchors":
            from tfcnn.models.anchors import generate_anchors
            from tfcnn.models.registry import resolve_options
            from tfcnn.models.retinanet import anchor_spec

            task.spec = anchor_spec(resolve_options(cfg.model))
            task.anchors = generate_anchors(task.spec, task.height, task.width)
        return task

    def _need_anchors(self) -> np.ndarray:
        if self.anchors is None:
            raise ConfigError("the detection task was not configured with the run's model (get_task(name, cfg))")
        return self.anchors

    # ------------------------------------------------------------- train
    def feed(self, ds, cfg: Any, *, training: bool):
        """``(images, box rows)`` -> ``(images, targets)``: per-anchor targets ``[B, A, 5]`` or
        the localiser's ``[B, 5]``, computed in tf.data (after the box-aware augmentation)."""
        import tensorflow as tf

        from tfcnn.tasks import box_coding

        if self.kind == "single":
            return ds.map(lambda x, y: (x, box_coding.single_object_target(y)), num_parallel_calls=tf.data.AUTOTUNE)
        anchors = tf.constant(self._need_anchors())
        pos, neg = float(self.det.positive_iou), float(self.det.negative_iou)
        return ds.map(
            lambda x, y: (x, box_coding.assign_batch(anchors, y, pos, neg)), num_parallel_calls=tf.data.AUTOTUNE
        )

    def loss_fn(self, num_outputs: int, label_smoothing: float = 0.0, *, from_logits: bool = True, **_: Any):
        from tfcnn.tasks import detection_losses as dl

        det = self.det
        if self.kind == "single":
            return lambda y, p: dl.single_object_loss(y, p, det)
        anchors = self._need_anchors()
        return lambda y, p: dl.detection_loss(y, p, anchors, det)

    def keras_loss(self, label_smoothing: float = 0.0, **_: Any):
        from tfcnn.tasks import detection_losses as dl

        if self.kind == "single":
            return dl.SingleObjectLoss(self.det)
        return dl.DetectionLoss(self.det, self.spec, self.height, self.width)

    def keras_metrics(self, label_smoothing: float = 0.0, **_: Any) -> list:
        """The two parts of the loss, as history columns (class_loss, box_loss)."""
        import keras

        return [
            keras.metrics.MeanMetricWrapper(self._part("class"), name="class_loss"),
            keras.metrics.MeanMetricWrapper(self._part("box"), name="box_loss"),
        ]

    def _part(self, which: str):
        import tensorflow as tf

        from tfcnn.tasks import detection_losses as dl

        det = self.det
        if self.kind == "single":
            def single(y, p):
                parts = dl.single_object_parts(y, p, det)
                return parts[0] if which == "class" else parts[1]

            return single
        anchors = tf.constant(self._need_anchors())

        def part(y, p):
            y = tf.cast(y, tf.float32)
            p = tf.cast(p, tf.float32)
            if which == "class":
                return dl.focal_loss(y[..., 4], p[..., 4:], det.focal_gamma, det.focal_alpha)
            return dl.box_loss(det.box_loss, y, p[..., :4], anchors, det.smooth_l1_delta)

        return part

    def check_model(self, model, info: Any) -> None:
        got = tuple(model.outputs[0].shape[1:])
        want = self._raw_shape(info.num_classes)
        if got != want:
            raise ConfigError(
                f"a {self.model_name} detector for {info.num_classes} classes at {self.height}x{self.width} must output "
                f"{want}, but the model outputs {got}; build it with the same model.options the task reads"
            )

    def _raw_shape(self, num_classes: int) -> tuple[int, ...]:
        if self.kind == "single":
            return (4 + num_classes + 1,)
        return (len(self._need_anchors()), 4 + num_classes)

    def check_export(self, model, labels: Sequence[str]) -> None:
        got = tuple(model.outputs[0].shape[1:])
        if got != self._raw_shape(len(labels)):
            raise ExportError(f"model outputs {got}, not the {self.model_name} output {self._raw_shape(len(labels))} for {len(labels)} classes")

    # ------------------------------------------------------------- inference (shared by evaluate, export, verify)
    def postprocess(self, raw):
        """tf raw model outputs -> the four detection outputs (boxes, classes, scores, num_detections)."""
        from tfcnn.tasks import postprocess

        det = self.det
        if self.kind == "single":
            return postprocess.detect_single(raw, score_threshold=det.score_threshold)
        return postprocess.detect(
            raw,
            self._need_anchors(),
            score_threshold=det.score_threshold,
            nms_iou=det.nms_iou,
            pre_nms_top_k=det.pre_nms_top_k,
            max_detections=det.max_detections,
        )

    @property
    def max_detections(self) -> int:
        return 1 if self.kind == "single" else int(self.det.max_detections)

    def reference(self, model, images: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
        """The Keras model's detections on ``images`` (uint8 NHWC at the model's size), through
        the same post-processing graph the exports contain."""
        import tensorflow as tf

        fn = tf.function(lambda x: self.postprocess(model(x, training=False)), reduce_retracing=True, autograph=False)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in OUTPUTS}
        for start in range(0, len(images), batch_size):
            out = fn(tf.constant(images[start : start + batch_size].astype(np.float32)))
            for k in OUTPUTS:
                parts[k].append(np.asarray(out[k]))
        if not len(images):
            d = self.max_detections
            return {"boxes": np.zeros((0, d, 4), np.float32), "classes": np.zeros((0, d), np.float32),
                    "scores": np.zeros((0, d), np.float32), "num_detections": np.zeros((0,), np.float32)}
        return {k: np.concatenate(v, 0) for k, v in parts.items()}

    def reference_score(self, reference: Any, labels: np.ndarray) -> float:
        """Keras' mAP@0.5 on the verified test scenes (what the formats' drops are measured from)."""
        return float(_coco(reference, labels, None, self.height, self.width)["map_50"])

    # ------------------------------------------------------------- export / verify
    def output_text(self, labels: Sequence[str]) -> str:
        return (
            f"Up to {self.max_detections} detections, best first: boxes (ymin, xmin, ymax, xmax) normalised to 0..1, "
            "class ids into the packed labels.txt, scores (0..1) and the valid count num_detections"
        )

    def describe(self, labels: Sequence[str], model_name: str) -> str:
        what = "single-object localiser" if self.kind == "single" else "object detector"
        return f"{len(labels)}-class {what} ({model_name})"

    def card_limitations(self) -> list[str]:
        return [
            f"Detections under score {self.det.score_threshold:g} are dropped and at most {self.max_detections} are returned "
            f"per image after per-class NMS at IoU {self.det.nms_iou:g}; rows past num_detections are padding.",
            "Boxes are normalised to the model's input, which is the whole image resized to the model size: map them back "
            "through that resize (aspect ratio is not preserved).",
            "Quantized variants move boxes and scores slightly and can drop or add detections near the score threshold; "
            "verification.json reports mAP and box agreement per format.",
        ]

    def output_contract(self, labels: Sequence[str]) -> dict[str, Any]:
        d = self.max_detections
        return {
            "kind": "detection",
            "tensors": list(OUTPUTS),
            # the serving signatures (SavedModel, ONNX) add the class names
            "serving_tensors": [*OUTPUTS, "labels"],
            "labels": f"string [N, {d}] (SavedModel / ONNX serving only): labels.txt name of each class id",
            "boxes": f"float32 [N, {d}, 4]: (ymin, xmin, ymax, xmax) normalised to 0..1 of the model input, best first",
            "classes": f"float32 [N, {d}]: class id into labels.txt (float, as TFLite's detection outputs)",
            "scores": f"float32 [N, {d}]: detection score in 0..1",
            "num_detections": "float32 [N]: how many rows are real detections (the rest is zero padding)",
            "max_detections": d,
            "score_threshold": float(self.det.score_threshold),
            "nms_iou": float(self.det.nms_iou) if self.kind == "anchors" else None,
            "detector": self.model_name,
        }

    def mobile_outputs(self, outputs, inputs=None) -> dict:
        return dict(self.postprocess(outputs))

    def serving_outputs(self, outputs, label_lookup, inputs=None) -> dict:
        import tensorflow as tf

        out = dict(self.postprocess(outputs))
        out["labels"] = label_lookup(tf.cast(out["classes"], tf.int64))  # TF Serving clients get names too
        return out

    def compare(self, outputs: Any, reference: Any, labels: np.ndarray) -> dict[str, float]:
        """mAP of the artifact's detections on the test scenes, and how many of its detections
        Keras also made (same class, IoU >= 0.9)."""
        from tfcnn.tasks.coco_metrics import box_agreement

        missing = [k for k in OUTPUTS if not isinstance(outputs, dict) or k not in outputs]
        if missing:
            got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
            raise ValueError(f"artifact returned {got}; a detector must return {', '.join(OUTPUTS)}")
        d = self.max_detections
        out = {k: np.asarray(outputs[k], np.float32) for k in OUTPUTS}
        n = len(reference["num_detections"])
        shapes = {"boxes": (n, d, 4), "classes": (n, d), "scores": (n, d), "num_detections": (n,)}
        for k, shape in shapes.items():
            if out[k].shape != shape:
                if out[k].size == int(np.prod(shape)):
                    out[k] = out[k].reshape(shape)
                else:
                    raise ValueError(f"artifact's {k} has shape {out[k].shape}, expected {shape}")
        if not all(np.all(np.isfinite(v)) for v in out.values()):
            return {"map_50": math.nan, "map": math.nan, "box_agreement": math.nan, "non_finite": True}
        m = _coco(out, labels, None, self.height, self.width)
        keras_map = self._keras_map(reference, labels)
        agreement = box_agreement(_dets(out), _dets(reference), iou=0.9, score_floor=AGREEMENT_FLOOR)
        compared = int(sum(np.sum(out["scores"][i, : int(round(float(c)))] >= AGREEMENT_FLOOR) for i, c in enumerate(out["num_detections"])))
        return {
            "map_50": round(float(m["map_50"]), 6),
            "map": round(float(m["map"]), 6),
            "keras_map": round(keras_map, 6),
            "box_agreement": round(float(agreement), 6),
            "agreement_detections": compared,
            "mean_detections": round(float(np.mean(out["num_detections"])), 3) if n else 0.0,
            "count_agreement": round(float(np.mean(out["num_detections"] == reference["num_detections"])), 6) if n else 1.0,
        }

    def _keras_map(self, reference: dict[str, np.ndarray], labels: np.ndarray) -> float:
        """Keras' mAP@[.5:.95] on these scenes, computed once per reference (every format compares with it)."""
        key = id(reference["boxes"])
        cached = getattr(self, "_keras_map_cache", None)
        if cached is None or cached[0] != key:
            self._keras_map_cache = (key, float(_coco(reference, labels, None, self.height, self.width)["map"]))
        return self._keras_map_cache[1]

    def format_limits(self, classifier_limits: dict[str, float]) -> dict[str, float]:
        """A float format may lose 0.5 points of mAP@0.5, an int8 one (full-integer or dynamic-range
        weights) 2; box agreement with Keras is required of the exact formats."""
        if "max_abs_diff" in classifier_limits:  # SavedModel, ONNX, TFLite float32: the same maths
            return {"max_map50_drop": 0.005, "max_map_drop": 0.005, "min_box_agreement": 0.98}
        if "max_accuracy_drop" in classifier_limits or classifier_limits.get("agreement", 1.0) <= 0.99:
            return {"max_map50_drop": 0.02}
        return {"max_map50_drop": 0.005}

    def failures(self, row: dict[str, Any], limits: dict[str, float], reference_score: float) -> list[str]:
        """Written so that NaN fails: each check asks 'is it provably within the limit?'."""
        fails = []
        if row.get("non_finite"):
            fails.append("the artifact returned non-finite values (NaN or infinity)")
        if not math.isfinite(reference_score):
            fails.append("the Keras model's mAP@0.5 is not finite; nothing to measure the drop from")
        v = row.get("map_50")
        drop = reference_score - v if v is not None else math.nan
        if "max_map50_drop" in limits and not drop <= limits["max_map50_drop"] + 1e-12:
            fails.append(f"mAP@0.5 {_pts(v)} is {_pts(drop)} points below Keras' (limit {100 * limits['max_map50_drop']:.2f})")
        ref_map = row.get("keras_map")
        if "max_map_drop" in limits and ref_map is not None:
            v = row.get("map")
            drop = ref_map - v if v is not None else math.nan
            if not drop <= limits["max_map_drop"] + 1e-12:
                fails.append(f"mAP@[.5:.95] {_pts(v)} is {_pts(drop)} points below Keras' (limit {100 * limits['max_map_drop']:.2f})")
        v = row.get("box_agreement")
        if "min_box_agreement" in limits and not row.get("agreement_detections"):
            fails.append(f"no detection scoring >= {AGREEMENT_FLOOR:g}: box agreement with Keras compared nothing")
        elif "min_box_agreement" in limits and not (v is not None and v >= limits["min_box_agreement"]):
            fails.append(f"box agreement with Keras {_pts(v)}% < {100 * limits['min_box_agreement']:.2f}%")
        return fails

    def verify_line(self, row: dict[str, Any]) -> str:
        return (
            f"mAP@0.5 {_pts(row.get('map_50'))}, mAP {_pts(row.get('map'))}, box agreement {_pts(row.get('box_agreement'))}%, "
            + latency_text(row)
        )

    def verify_columns(self) -> list[tuple[str, str, str, float]]:
        """verification.md's per-format columns: (header, row key, format spec, scale)."""
        return [("mAP@0.5", "map_50", ".2f", 100), ("mAP@[.5:.95]", "map", ".2f", 100),
                ("box agreement", "box_agreement", ".2f", 100), ("detections/image", "mean_detections", ".2f", 1)]


def _pts(v: Any) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"


def _dets(d: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Per-image (boxes, classes, scores, count) tuples, what the COCO evaluator takes."""
    return [
        (d["boxes"][i], d["classes"][i], d["scores"][i], int(round(float(d["num_detections"][i]))))
        for i in range(len(d["num_detections"]))
    ]


def _coco(detections: dict[str, np.ndarray], labels: np.ndarray, num_classes: int | None, height: int, width: int):
    from tfcnn.tasks.coco_metrics import evaluate_detections

    labels = np.asarray(labels, np.float32)
    k = num_classes
    if k is None:
        seen = [labels[..., 4].max(initial=-1), np.asarray(detections["classes"]).max(initial=-1)]
        k = int(max(seen)) + 1
    result = evaluate_detections(list(labels), _dets(detections), max(k, 1), height, width)
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


TASKS.register("detection", Detection())
