"""The segmentation task's evaluation: per-class Dice and IoU, mean IoU, pixel accuracy, boundary
F-score and the confusion matrix over classes on the test split, and the best and worst test
images for the report. The Keras model's masks are the argmax of the same softmax every exported
format returns, so these are the numbers verify compares each artifact with.
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
from tfcnn.tasks.segmentation_metrics import (
    boundary_f1,
    confusion,
    mean_dice,
    mean_iou,
    per_class_dice,
    per_class_iou,
    pixel_accuracy,
)
from tfcnn.util import log


def _test_loss(model: keras.Model, bundle: DataBundle, task: Any) -> float:
    import tensorflow as tf

    fn = task.loss_fn(len(bundle.info.class_names) + 1)
    total, count = 0.0, 0
    for x, y in bundle.test:
        per = fn(y, model(tf.cast(x, tf.float32), training=False))
        total += float(tf.reduce_sum(per))
        count += int(per.shape[0])
    return total / count if count else math.nan


def per_image_iou(pred: np.ndarray, true: np.ndarray, k: int) -> np.ndarray:
    """Mean IoU of each test image on its own (classes absent from both masks left out)."""
    return np.array([mean_iou(confusion(pred[i : i + 1], true[i : i + 1], k)) for i in range(len(pred))], np.float64)


def evaluate_segmentation(model: keras.Model, bundle: DataBundle, run: "Run", task: Any, **options: Any) -> dict[str, Any]:
    """Writes the Evaluation record and predictions.npz (argmax masks, the report's images);
    returns the headline (test_mean_iou, test_mean_dice, test_pixel_accuracy, test_loss, ...)."""
    run = as_run(run)
    cfg = run.config()
    x_test, y_test = bundle.arrays["test"]
    y = np.asarray(y_test).astype(np.int64)
    names = ["background", *bundle.info.class_names]
    k = len(names)
    masks, confidence = [], []
    for start in range(0, len(x_test), 64):
        probs = task.probabilities(model, x_test[start : start + 64])
        masks.append(probs.argmax(-1).astype(np.uint8))
        confidence.append(probs.max(-1).astype(np.float16))
    pred = np.concatenate(masks, 0) if masks else np.zeros(y.shape, np.uint8)
    cm = confusion(pred, y, k)
    iou_c, dice_c = per_class_iou(cm), per_class_dice(cm)
    tol = int(cfg.segmentation.boundary_tolerance)
    bf = float(boundary_f1(pred, y, tolerance_px=tol)) if tol > 0 else None
    headline: dict[str, Any] = {
        "test_mean_iou": _num(mean_iou(cm)),
        "test_mean_dice": _num(mean_dice(cm)),  # foreground classes
        "test_pixel_accuracy": _num(pixel_accuracy(cm)),
        "test_boundary_f1": _num(bf),
        "test_loss": _num(_test_loss(model, bundle, task)),
        "num_test": int(len(x_test)),
    }
    scores = per_image_iou(pred, y, k)
    n = min(int(cfg.segmentation.report_images), len(scores))
    order = np.argsort(-np.nan_to_num(scores, nan=-1.0), kind="stable")
    shown = np.concatenate([order[: n - n // 2], order[::-1][: n // 2]]).astype(np.int64) if n else np.zeros(0, np.int64)
    files = {
        "predictions": save_npz(
            run, "predictions", masks=pred, truth=y.astype(np.uint8), image_iou=scores.astype(np.float32),
            gallery=shown, gallery_images=np.asarray(x_test[shown], np.uint8), gallery_confidence=np.concatenate(confidence, 0)[shown]
            if confidence else np.zeros((0,), np.float16),
        )
    }
    details = {
        "per_class": [
            {"class": names[c], "iou": _num(iou_c[c]), "dice": _num(dice_c[c]), "pixels": int(cm[c].sum()), "predicted": int(cm[:, c].sum())}
            for c in range(k)
        ],
        "confusion_matrix": cm.tolist(),
        "class_names": names,
        "boundary_tolerance_px": tol,
        "training": training_summary(run),
        "layer_names": [layer.name for layer in model.layers],
    }
    unavailable = {
        key: "not an image classifier: segmentation scores pixels (see the per-class table and confusion matrix)"
        for key in ("calibration", "misclassified", "confident_mistakes", "embedding_pca", "embedding_tsne", "gradcam")
    }
    log.info(
        "evaluate: mean IoU %.4f, foreground Dice %.4f, pixel accuracy %.4f on %d test images",
        *(math.nan if headline[key] is None else headline[key] for key in ("test_mean_iou", "test_mean_dice", "test_pixel_accuracy")),
        len(x_test),
    )
    run.write(Evaluation(task=task.name, num_test=int(len(x_test)), headline=headline, details=details, files=files, unavailable=unavailable))
    return headline


EVALUATIONS.register("segmentation", evaluate_segmentation)
