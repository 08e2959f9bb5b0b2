"""The evaluate stage: test-split metrics plus every diagnostic the report shows, computed once.

The report only embeds what this stage leaves in the run directory (plus Grad-CAM, which
needs the model), so re-building a report is cheap and never re-runs inference on the whole
test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from tfcnn.config import EvaluateConfig
from tfcnn.data.bundle import DataBundle
from tfcnn.errors import TfcnnError
from tfcnn.evaluate.calibration import ece_from_bins, reliability_bins
from tfcnn.evaluate.embedding import penultimate_features, project, sample_indices
from tfcnn.evaluate.metrics import Predictions, confusion_matrix, per_class_metrics, predict_split
from tfcnn.evaluate.training import (
    gradient_norms,
    read_diagnostics,
    read_history,
    read_weight_histograms,
    stop_epochs,
)
from tfcnn.rundir import RunDir, read_json, write_json

PREDICTIONS_FILE = "predictions.npz"  # probs [N, K] float32, labels, predicted (test split order)
EMBEDDING_FILE = "embedding.npz"  # indices into the test split, labels, pca/tsne coordinates

# Plot files under RUN_DIR/plots, keyed the way evaluation.json's "files" and "unavailable" are.
PLOTS = {
    "confusion_matrix": "confusion_matrix.png",
    "misclassified": "misclassified.png",
    "confident_mistakes": "confident_mistakes.png",
    "reliability": "reliability.png",
    "embedding_pca": "embedding_pca.png",
    "embedding_tsne": "embedding_tsne.png",
    "learning_curves": "learning_curves.png",
    "gradient_norms": "gradient_norms.png",
    "weight_histograms": "weight_histograms.png",
}


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(f"[tfcnn] evaluate: {msg}", flush=True)


def _caption(names: list[str], true: int, pred: int, prob: float) -> str:
    return f"{names[true]} / {names[pred]}\np={prob:.2f}"


def evaluate(
    model: keras.Model,
    bundle: DataBundle,
    run_dir: Path,
    *,
    top_k: int = 5,
    quiet: bool = False,
    calibration_bins: int = 15,
    confident_threshold: float = 0.95,
    embedding_samples: int = 1000,
    gallery_size: int = 25,
) -> dict[str, Any]:
    """Evaluate on bundle's test split; write evaluation.json, predictions, embeddings and plots/.

    Returns the headline numbers (test_loss, test_accuracy, top_k, top_k_accuracy, ece, macro_f1).
    """
    from tfcnn.vis import plots

    rd = RunDir(Path(run_dir))
    rd.plots.mkdir(parents=True, exist_ok=True)
    info = bundle.info
    names = list(info.class_names)
    x_test, y_test = bundle.arrays["test"]

    preds: Predictions = predict_split(model, bundle.test, info.num_classes, top_k, total=len(y_test), quiet=quiet)
    if len(preds.labels) != len(y_test) or not np.array_equal(preds.labels, np.asarray(y_test)):
        raise TfcnnError(
            "the batched test pipeline does not yield bundle.arrays['test'] in order; "
            "test indices in evaluation.json would be wrong (is the test split shuffled?)"
        )
    probs, labels, predicted = preds.probs, preds.labels, preds.predicted
    conf = probs.max(axis=1)
    files: dict[str, str] = {}
    unavailable: dict[str, str] = {}

    def save(key: str, fig) -> None:
        plots.save_figure(fig, rd.plots / PLOTS[key])
        files[key] = f"plots/{PLOTS[key]}"

    # Metrics from the confusion matrix.
    cm = confusion_matrix(labels, predicted, info.num_classes)
    table = per_class_metrics(cm, names)
    bins = reliability_bins(probs, labels, calibration_bins)
    ece = ece_from_bins(bins)
    _say(quiet, f"accuracy {preds.accuracy:.4f}, loss {preds.loss:.4f}, top-{preds.top_k} {preds.top_k_accuracy:.4f}, ECE {ece:.4f}")

    np.savez_compressed(rd.root / PREDICTIONS_FILE, probs=probs, labels=labels, predicted=predicted)
    files["predictions"] = PREDICTIONS_FILE
    save("confusion_matrix", plots.confusion_matrix_figure(cm, names))
    save("reliability", plots.reliability_figure(bins, ece))

    # Galleries: the first mistakes in test order, and the most confident ones (likely label noise).
    wrong = np.flatnonzero(predicted != labels)
    shown = wrong[:gallery_size]
    if len(shown):
        save("misclassified", plots.image_grid_figure(
            x_test[shown], [_caption(names, labels[i], predicted[i], conf[i]) for i in shown],
            f"Misclassified test images (true / predicted), {len(shown)} of {len(wrong)}"))
    else:
        unavailable["misclassified"] = "the model made no mistakes on the test split"
    confident = wrong[conf[wrong] > confident_threshold]
    confident = confident[np.argsort(-conf[confident], kind="stable")]
    if len(confident):
        top = confident[:gallery_size]
        save("confident_mistakes", plots.image_grid_figure(
            x_test[top], [_caption(names, labels[i], predicted[i], conf[i]) for i in top],
            f"Most confident mistakes (p > {confident_threshold:g}): check these labels"))
    else:
        unavailable["confident_mistakes"] = f"no mistake had probability above {confident_threshold:g}"

    # Embeddings of the penultimate features on a capped, class-balanced sample.
    embedding: dict[str, Any] = {}
    if embedding_samples > 0 and len(labels) >= 5:
        idx = sample_indices(labels, embedding_samples, seed=0)
        _say(quiet, f"embedding {len(idx)} test images (PCA, t-SNE)")
        feats = penultimate_features(model, x_test[idx])
        proj = project(feats, seed=0)
        np.savez_compressed(rd.root / EMBEDDING_FILE, indices=idx, labels=labels[idx], predicted=predicted[idx], **proj)
        files["embedding"] = EMBEDDING_FILE
        embedding = {"samples": int(len(idx)), "feature_dim": int(feats.shape[1])}
        wrong_sel = predicted[idx] != labels[idx]
        if "pca" in proj:
            ev = proj["pca_explained"]
            embedding["pca_explained_variance"] = [float(v) for v in ev]
            save("embedding_pca", plots.embedding_figure(
                proj["pca"], labels[idx], names,
                f"PCA of penultimate features ({100 * float(ev.sum()):.1f}% variance)", wrong_sel))
        if "tsne" in proj:
            save("embedding_tsne", plots.embedding_figure(
                proj["tsne"], labels[idx], names, "t-SNE of penultimate features", wrong_sel))
        else:
            unavailable["embedding_tsne"] = "too few samples or feature dimensions for t-SNE"
    else:
        reason = "evaluate.embedding_samples = 0" if embedding_samples <= 0 else "fewer than 5 test images"
        unavailable["embedding_pca"] = unavailable["embedding_tsne"] = reason

    # Training diagnostics written by the engine.
    diag = read_diagnostics(rd.diagnostics)
    metrics_json = read_json(rd.metrics) if rd.metrics.is_file() else {}
    best_epoch, stopped_epoch = stop_epochs(diag, metrics_json)
    history = read_history(rd.history) if rd.history.is_file() else {}
    if history:
        save("learning_curves", plots.learning_curves_figure(history, best_epoch, stopped_epoch))
    else:
        unavailable["learning_curves"] = "history.csv is missing or empty (the model was not trained by a tfcnn engine)"
    norms = gradient_norms(diag, [layer.name for layer in model.layers])
    if norms:
        save("gradient_norms", plots.gradient_norms_figure(*norms))
    else:
        engine = diag.get("engine") or metrics_json.get("engine")
        if not rd.diagnostics.is_file():
            unavailable["gradient_norms"] = "diagnostics.json is missing"
        elif engine == "fit":
            unavailable["gradient_norms"] = "the fit engine does not record per-layer gradient norms; train with train.engine = 'tape'"
        else:
            unavailable["gradient_norms"] = "no gradient norms were recorded (train.gradient_norms = false?)"

    weights = read_weight_histograms(rd.tensorboard, [layer.name for layer in model.layers])
    if weights:
        save("weight_histograms", plots.weight_distribution_figure(weights))
    elif not rd.tensorboard.is_dir():
        unavailable["weight_histograms"] = "no tensorboard/ folder in the run (train.tensorboard = false)"
    else:
        unavailable["weight_histograms"] = "TensorBoard logs hold no weight histograms (train.histogram_freq = 0)"

    evaluation = {
        "num_test": int(len(labels)),
        "class_names": names,
        "test_loss": preds.loss,
        "test_accuracy": preds.accuracy,
        "top_k": preds.top_k,
        "top_k_accuracy": preds.top_k_accuracy,
        "ece": ece,
        "calibration": {"bins": calibration_bins, **bins},
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
            "stop_reason": diag.get("stop_reason", metrics_json.get("stop_reason")),
            "engine": diag.get("engine", metrics_json.get("engine")),
        },
        "files": files,
        "unavailable": unavailable,
    }
    write_json(rd.evaluation, evaluation)
    return {
        "test_loss": preds.loss,
        "test_accuracy": preds.accuracy,
        "top_k": preds.top_k,
        "top_k_accuracy": preds.top_k_accuracy,
        "ece": ece,
        "macro_f1": table["averages"]["macro"]["f1"],
        "num_test": int(len(labels)),
    }


def evaluate_options(ev: EvaluateConfig) -> dict[str, Any]:
    """evaluate()'s keyword settings from the [evaluate] config section (for the pipeline and evaluate_run)."""
    return {
        "top_k": ev.top_k,
        "calibration_bins": ev.calibration_bins,
        "confident_threshold": ev.confident_threshold,
        "embedding_samples": ev.embedding_samples,
        "gallery_size": ev.gallery_size,
    }


def evaluate_run(run_dir: Path, *, quiet: bool = False) -> dict[str, Any]:
    """Re-evaluate a finished run from its directory; refreshes the test figures in metrics.json."""
    from tfcnn.config import load_json
    from tfcnn.data import load_data

    rd = RunDir(Path(run_dir))
    if not rd.root.is_dir():
        raise TfcnnError(f"run directory {str(rd.root)!r} does not exist")
    rd.require(rd.config, rd.model)
    cfg = load_json(rd.config)
    bundle = load_data(cfg.data)
    model = load_model(rd.model)
    result = evaluate(model, bundle, rd.root, quiet=quiet, **evaluate_options(cfg.evaluate))
    if rd.metrics.is_file():
        write_json(rd.metrics, {**read_json(rd.metrics), **result})
    return result


def load_model(path: Path) -> keras.Model:
    """model.keras without its optimizer (inference only), one clear line if unreadable."""
    import tfcnn.models  # noqa: F401  (registers any custom layers the builders use)

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # keras raises several types for corrupt/foreign files
        raise TfcnnError(f"{path} could not be loaded as a Keras model ({type(exc).__name__}: {exc}); re-run training") from None
