"""The evaluate stage: test-split metrics, calibration, the mistakes worth a look, embeddings.

It writes numbers (the Evaluation record, predictions, embedding); :mod:`tfcnn.vis` draws them.
Each task registers its evaluation in :data:`tfcnn.evaluate.base.EVALUATIONS`
(:mod:`tfcnn.evaluate.classification` for classifiers).
"""

from tfcnn.evaluate.calibration import expected_calibration_error, reliability_bins
from tfcnn.evaluate.metrics import confusion_matrix, per_class_metrics, softmax
from tfcnn.evaluate.base import EVALUATIONS
from tfcnn.evaluate.stage import evaluate, evaluate_options, evaluate_run

__all__ = [
    "EVALUATIONS",
    "confusion_matrix",
    "evaluate",
    "evaluate_options",
    "evaluate_run",
    "expected_calibration_error",
    "per_class_metrics",
    "reliability_bins",
    "softmax",
]
