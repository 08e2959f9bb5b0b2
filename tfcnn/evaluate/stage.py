"""The evaluate stage: every number about the test split, computed once and written to the run.

It writes numbers only: the Evaluation record (per-class table, confusion matrix, calibration
bins, the mistakes worth looking at), the test-split outputs (``predictions``) and the 2-D
feature projections (``embedding``). Figures are drawn from those files by
:mod:`tfcnn.vis.figures`, so a report can be rebuilt, or restyled, without re-running inference
on the whole test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras

from tfcnn.config import EvaluateConfig
from tfcnn.data import bundle_for
from tfcnn.data.bundle import DataBundle
from tfcnn.evaluate import classification as _classification  # noqa: F401  (registers its evaluation)
from tfcnn.evaluate import reconstruction as _reconstruction  # noqa: F401  (registers its evaluation)
from tfcnn.evaluate import detection as _detection  # noqa: F401  (registers its evaluation)
from tfcnn.evaluate import segmentation as _segmentation  # noqa: F401  (registers its evaluation)
from tfcnn.evaluate.base import as_run, evaluation_for
from tfcnn.models.saved import load_trained_model
from tfcnn.run import Metrics, Run
from tfcnn.tasks import get_task


def evaluate(
    model: keras.Model,
    bundle: DataBundle,
    run: "Run | Path",
    **options: Any,
) -> dict[str, Any]:
    """Evaluate on bundle's test split with the run's task; returns the headline scores.

    The task's registered evaluation (:data:`tfcnn.evaluate.base.EVALUATIONS`) writes the
    Evaluation record and its arrays; for classification the scores are test_loss,
    test_accuracy, top_k, top_k_accuracy, ece, macro_f1 and num_test.
    """
    run = as_run(run)
    cfg = run.config()
    task = get_task(cfg.task, cfg)
    return evaluation_for(task.name)(model, bundle, run, task, **options)


def evaluate_options(ev: EvaluateConfig) -> dict[str, Any]:
    """evaluate()'s keyword settings from the [evaluate] config section (for the pipeline and evaluate_run)."""
    return {
        "top_k": ev.top_k,
        "calibration_bins": ev.calibration_bins,
        "confident_threshold": ev.confident_threshold,
        "embedding_samples": ev.embedding_samples,
        "gallery_size": ev.gallery_size,
        "temperature_scaling": ev.temperature_scaling,
    }


def evaluate_run(run: "Run | Path | str") -> dict[str, Any]:
    """Re-evaluate a finished run from its directory; refreshes the test scores in its Metrics record."""
    run = Run.open(run, need=("config", "model"))
    cfg = run.config()
    bundle = bundle_for(run)
    model = load_trained_model(run)
    result = evaluate(model, bundle, run, **evaluate_options(cfg.evaluate))
    metrics = run.read_optional(Metrics)
    if metrics is not None:
        metrics.scores.update(result)
        run.write(metrics)
    return result
