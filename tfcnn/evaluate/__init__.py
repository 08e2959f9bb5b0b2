"""The evaluate stage: test-split metrics, calibration, error galleries, embeddings, training plots."""

from tfcnn.evaluate.calibration import expected_calibration_error, reliability_bins
from tfcnn.evaluate.metrics import confusion_matrix, per_class_metrics, softmax
from tfcnn.evaluate.stage import EMBEDDING_FILE, PLOTS, PREDICTIONS_FILE, evaluate, evaluate_options, evaluate_run, load_model

__all__ = [
    "EMBEDDING_FILE",
    "PLOTS",
    "PREDICTIONS_FILE",
    "confusion_matrix",
    "evaluate",
    "evaluate_options",
    "evaluate_run",
    "expected_calibration_error",
    "load_model",
    "per_class_metrics",
    "reliability_bins",
    "softmax",
]
