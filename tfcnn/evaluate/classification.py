"""Classification's evaluation: loss, accuracy, top-k, per-class precision/recall/F1, confusion
matrix, calibration (reliability bins, ECE), the mistakes worth a look, and a PCA/t-SNE embedding
of the penultimate features. Numbers only; :mod:`tfcnn.vis.figures` draws them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from tfcnn.data.bundle import DataBundle
from tfcnn.errors import TfcnnError
from tfcnn.evaluate.base import EVALUATIONS, as_run, save_npz
from tfcnn.evaluate.calibration import ece_from_bins, fit_temperature, reliability_bins
from tfcnn.evaluate.embedding import penultimate_features, project, sample_indices
from tfcnn.evaluate.metrics import Predictions, confusion_matrix, per_class_auc, per_class_metrics, predict_split
from tfcnn.evaluate.training import read_record, stop_epochs
from tfcnn.run import Diagnostics, Evaluation, Metrics, Run
from tfcnn.util import log


def evaluate_classification(
    model: keras.Model,
    bundle: DataBundle,
    run: "Run | Path",
    task: Any,
    *,
    top_k: int = 5,
    calibration_bins: int = 15,
    confident_threshold: float = 0.95,
    embedding_samples: int = 1000,
    gallery_size: int = 25,
    temperature_scaling: bool = False,
) -> dict[str, Any]:
    """Evaluate on bundle's test split; write the Evaluation record, predictions and the embedding.

    Returns the headline numbers (test_loss, test_accuracy, top_k, top_k_accuracy, ece, macro_f1,
    and num_test). ``bundle`` is also left in the run's memo as its data bundle (what
    :func:`tfcnn.data.bundle_for` returns), so the figures and the report of this process reuse
    it instead of decoding the data again.
    """
    run = as_run(run)
    run.memo("data_bundle", lambda: bundle)
    info = bundle.info
    names = list(info.class_names)
    x_test, y_test = bundle.arrays["test"]

    preds: Predictions = predict_split(model, bundle.test, info.num_classes, top_k, total=len(y_test))
    if len(preds.labels) != len(y_test) or not np.array_equal(preds.labels, np.asarray(y_test)):
        raise TfcnnError(
            "the batched test pipeline does not yield bundle.arrays['test'] in order; "
            "test indices in the evaluation would be wrong (is the test split shuffled?)"
        )
    probs, labels, predicted = task.outputs_to_scores(preds.logits), preds.labels, preds.predicted
    conf = probs.max(axis=1)
    unavailable: dict[str, str] = {}

    cm = confusion_matrix(labels, predicted, info.num_classes)
    table = per_class_metrics(cm, names)
    for row, auc in zip(table["per_class"], per_class_auc(probs, labels)):
        row.update(auc)
    for key in ("roc_auc", "pr_auc"):
        defined = [r[key] for r in table["per_class"] if r[key] is not None]
        table["averages"]["macro"][key] = float(np.mean(defined)) if defined else None
    bins = reliability_bins(probs, labels, calibration_bins)
    ece = ece_from_bins(bins)
    calibration: dict[str, Any] = {"bins": calibration_bins, **bins}
    scaled_headline: dict[str, Any] = {}
    if temperature_scaling:
        if info.num_val == 0:
            unavailable["reliability_scaled"] = "no validation split to fit a temperature on (data.val_fraction = 0)"
            log.warning("evaluate: evaluate.temperature_scaling is on but there is no validation split; not scaled")
        else:
            # Fitted on validation only: the test split stays unseen, so the ECE below is honest.
            val = predict_split(model, bundle.val, info.num_classes, top_k, total=info.num_val)
            t = fit_temperature(val.logits, val.labels)
            scaled_bins = reliability_bins(task.outputs_to_scores(preds.logits / t), labels, calibration_bins)
            ece_scaled = ece_from_bins(scaled_bins)
            calibration.update(temperature=t, scaled=scaled_bins, ece_scaled=ece_scaled)
            scaled_headline = {"temperature": t, "ece_scaled": ece_scaled}
            log.info(f"evaluate: temperature {t:.4f} fitted on {info.num_val} validation images: test ECE {ece:.4f} -> {ece_scaled:.4f}")
    log.info(f"evaluate: accuracy {preds.accuracy:.4f}, loss {preds.loss:.4f}, top-{preds.top_k} {preds.top_k_accuracy:.4f}, ECE {ece:.4f}")
    files = {"predictions": save_npz(run, "predictions", probs=probs, labels=labels, predicted=predicted)}

    # Galleries: the first mistakes in test order, and the most confident ones (likely label noise).
    wrong = np.flatnonzero(predicted != labels)
    shown = wrong[:gallery_size]
    if not len(shown):
        unavailable["misclassified"] = "the model made no mistakes on the test split"
    confident = wrong[conf[wrong] > confident_threshold]
    confident = confident[np.argsort(-conf[confident], kind="stable")]
    if not len(confident):
        unavailable["confident_mistakes"] = f"no mistake had probability above {confident_threshold:g}"

    embedding = _embedding(model, run, x_test, labels, predicted, embedding_samples, files, unavailable)

    diag = read_record(run, Diagnostics)
    metrics = read_record(run, Metrics)
    best_epoch, stopped_epoch = stop_epochs(diag, metrics)
    headline = {
        "test_loss": preds.loss,
        "test_accuracy": preds.accuracy,
        "top_k": preds.top_k,
        "top_k_accuracy": preds.top_k_accuracy,
        "ece": ece,
        "macro_f1": table["averages"]["macro"]["f1"],
        **scaled_headline,
    }
    details = {
        "class_names": names,
        "calibration": calibration,
        "confusion_matrix": cm.tolist(),
        **table,
        "num_errors": int(len(wrong)),
        "misclassified_shown": shown.tolist(),
        "confident_threshold": confident_threshold,
        "confident_mistakes": [
            {"index": int(i), "label": int(labels[i]), "predicted": int(predicted[i]), "prob": float(conf[i])}
            for i in confident[:gallery_size]
        ],
        "num_confident_mistakes": int(len(confident)),
        "embedding": embedding,
        "training": {
            "best_epoch": best_epoch,
            "stopped_epoch": stopped_epoch,
            "stop_reason": _first(diag, metrics, "stop_reason"),
            "engine": _first(diag, metrics, "engine"),
        },
        # Input side first: the order the gradient-norm and weight figures draw layers in.
        "layer_names": [layer.name for layer in model.layers],
    }
    run.write(
        Evaluation(
            task=task.name,
            num_test=int(len(labels)),
            headline=headline,
            details=details,
            files=files,
            unavailable=unavailable,
        )
    )
    return {**headline, "num_test": int(len(labels))}


def _embedding(
    model: keras.Model,
    run: Run,
    x_test: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    samples: int,
    files: dict[str, str],
    unavailable: dict[str, str],
) -> dict[str, Any]:
    """PCA/t-SNE of the penultimate features on a capped, class-balanced sample (or why not)."""
    if samples <= 0 or len(labels) < 5:
        reason = "evaluate.embedding_samples = 0" if samples <= 0 else "fewer than 5 test images"
        unavailable["embedding_pca"] = unavailable["embedding_tsne"] = reason
        run.path("embedding").unlink(missing_ok=True)  # an older evaluation's projection is not this one's
        return {}
    idx = sample_indices(labels, samples, seed=0)
    log.info(f"evaluate: embedding {len(idx)} test images (PCA, t-SNE)")
    feats = penultimate_features(model, x_test[idx])
    proj = project(feats, seed=0)
    files["embedding"] = save_npz(run, "embedding", indices=idx, labels=labels[idx], predicted=predicted[idx], **proj)
    embedding: dict[str, Any] = {"samples": int(len(idx)), "feature_dim": int(feats.shape[1])}
    if "pca" in proj:
        embedding["pca_explained_variance"] = [float(v) for v in proj["pca_explained"]]
    else:
        unavailable["embedding_pca"] = "too few samples for PCA"
    if "tsne" not in proj:
        unavailable["embedding_tsne"] = "too few samples or feature dimensions for t-SNE"
    return embedding


def _first(diag: Diagnostics | None, metrics: Metrics | None, key: str) -> Any:
    for rec in (diag, metrics):
        value = getattr(rec, key, None) if rec is not None else None
        if value:
            return value
    return None



EVALUATIONS.register("classification", evaluate_classification)
