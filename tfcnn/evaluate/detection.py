"""The detection task's evaluation: COCO metrics of the test scenes and what the report draws.

The Keras model's detections come from :meth:`tfcnn.tasks.detection.Detection.reference`, the
same decode + NMS graph every exported format contains, so the numbers here are the ones verify
compares each artifact with. Written: the Evaluation record (mAP@0.5, @0.75, @[.5:.95], AR@1/10/100,
by object size, per-class AP, PR curves at IoU 0.5, the test loss) and ``predictions.npz`` (every
test scene's detections, its ground truth, and which detections were right at IoU 0.5).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from tfcnn.data.bundle import DataBundle
from tfcnn.evaluate.base import EVALUATIONS, as_run, save_npz
from tfcnn.evaluate.base import finite_or_none as _num
from tfcnn.evaluate.training import training_summary
from tfcnn.run import Evaluation, Run
from tfcnn.tasks.coco_metrics import evaluate_detections, match_detections
from tfcnn.tasks.detection import OUTPUTS, _dets
from tfcnn.util import log

HEADLINE = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "ar_1", "ar_10", "ar_100")


def test_loss(model: keras.Model, bundle: DataBundle, task: Any, cfg: Any) -> float:
    """The training loss on the test split (targets made by the task's own feed, no augmentation)."""
    import tensorflow as tf

    fn = task.loss_fn(len(bundle.info.class_names))
    total, count = 0.0, 0
    for x, y in task.feed(bundle.test, cfg, training=False):
        per = fn(y, model(tf.cast(x, tf.float32), training=False))
        total += float(tf.reduce_sum(per))
        count += int(per.shape[0])
    return total / count if count else math.nan


def image_errors(arrays: dict[str, np.ndarray], min_score: float = 0.3) -> np.ndarray:
    """Per test image: false positives (detections scoring >= ``min_score`` not matched at IoU
    0.5) plus missed objects (more ground truths than matched confident detections)."""
    n = len(arrays["num_detections"])
    out = np.zeros(n, np.int64)
    for i in range(n):
        k = int(round(float(arrays["num_detections"][i])))
        confident = arrays["scores"][i, :k] >= min_score
        right = arrays["correct_50"][i, :k] & confident
        gt = int(np.sum(arrays["ground_truth"][i, :, 4] >= 0))
        out[i] = int(np.sum(confident & ~arrays["correct_50"][i, :k])) + max(gt - int(right.sum()), 0)
    return out


def gallery(arrays: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Test images the report draws: half with every object found and nothing extra, half with
    the most errors (false positives + misses), in test order within each half."""
    if n <= 0 or not len(arrays["num_detections"]):
        return np.zeros(0, np.int64)
    errors = image_errors(arrays)
    clean = np.flatnonzero(errors == 0)[: n - n // 2]
    worst = np.argsort(-errors, kind="stable")
    worst = worst[errors[worst] > 0][: n - len(clean)]
    return np.concatenate([clean, np.sort(worst)]).astype(np.int64)


def evaluate_detection(model: keras.Model, bundle: DataBundle, run: "Run", task: Any, **options: Any) -> dict[str, Any]:
    """COCO metrics on the test split, per-class AP and PR curves; writes the Evaluation record
    and predictions.npz; returns the headline (test_map, test_map_50, ..., test_loss, num_test)."""
    run = as_run(run)
    cfg = run.config()
    x_test, y_test = bundle.arrays["test"]
    names = list(bundle.info.class_names)
    h, w = int(x_test.shape[1]), int(x_test.shape[2])
    dets = task.reference(model, x_test)
    scores = evaluate_detections(list(np.asarray(y_test, np.float32)), _dets(dets), len(names), h, w)
    s = scores.to_dict() if hasattr(scores, "to_dict") else dict(scores)
    headline: dict[str, Any] = {f"test_{k}": _num(s.get(k)) for k in HEADLINE}
    headline["test_loss"] = _num(test_loss(model, bundle, task, cfg))
    headline["num_test"] = int(len(x_test))

    matched = match_detections(list(np.asarray(y_test, np.float32)), _dets(dets), iou=0.5)
    arrays = {k: dets[k] for k in OUTPUTS}
    arrays["ground_truth"] = np.asarray(y_test, np.float32)
    arrays["correct_50"] = np.asarray(matched, bool)
    shown = gallery(arrays, int(cfg.detection.report_images))
    arrays["gallery"] = shown
    arrays["gallery_images"] = np.asarray(x_test[shown], np.uint8)
    files = {"predictions": save_npz(run, "predictions", **arrays)}

    per_class = []
    ap, ap50 = s.get("per_class_ap") or [], s.get("per_class_ap50") or []
    counts = s.get("per_class_counts") or [{}] * len(names)
    for c, name in enumerate(names):
        per_class.append({
            "class": name,
            "ap": _num(ap[c] if c < len(ap) else None),
            "ap50": _num(ap50[c] if c < len(ap50) else None),
            **(counts[c] if c < len(counts) else {}),
        })
    details = {
        "per_class": per_class,
        "coco": {k: v for k, v in s.items() if k not in ("per_class_ap", "per_class_ap50", "pr_curves", "per_class_counts")},
        "pr_curves": s.get("pr_curves"),
        "detector": task.model_name,
        "postprocess": {
            "score_threshold": task.det.score_threshold,
            "nms_iou": task.det.nms_iou,
            "max_detections": task.max_detections,
        },
        "mean_detections": float(np.mean(dets["num_detections"])) if len(x_test) else 0.0,
        "training": training_summary(run),
        "layer_names": [layer.name for layer in model.layers],
    }
    unavailable = {
        key: "not a classifier: detections are boxes, their metrics are COCO's"
        for key in ("confusion", "calibration", "misclassified", "confident_mistakes", "embedding_pca", "embedding_tsne", "gradcam")
    }
    log.info(
        "evaluate: mAP@0.5 %.4f, mAP@[.5:.95] %.4f, AR@100 %.4f on %d test images",
        *(math.nan if headline[k] is None else headline[k] for k in ("test_map_50", "test_map", "test_ar_100")), len(x_test),
    )
    run.write(Evaluation(task=task.name, num_test=int(len(x_test)), headline=headline, details=details, files=files, unavailable=unavailable))
    return headline


EVALUATIONS.register("detection", evaluate_detection)
