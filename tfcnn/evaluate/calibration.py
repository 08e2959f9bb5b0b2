"""Confidence calibration: does "95 % sure" mean right 95 % of the time?

Accuracy alone hides over-confidence, which matters downstream (thresholds in the app, the
"likely mislabeled" gallery). Expected calibration error uses equal-width bins of the top-1
probability (Guo et al. 2017): ECE = sum_b |B_b|/N * |accuracy(B_b) - confidence(B_b)|.
"""

from __future__ import annotations

import numpy as np


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, list]:
    """Per-bin sample count, mean confidence and accuracy of the top-1 prediction."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs must be [N, classes] and labels [N]; got {probs.shape} and {labels.shape}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins (lo, hi] so confidence 1.0 lands in the last bin; 0 cannot be a top-1 probability.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.int64)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    acc_sum = np.bincount(which, weights=correct, minlength=bins)
    nz = np.maximum(count, 1)
    return {
        "edges": edges.tolist(),
        "count": count.tolist(),
        "confidence": np.where(count > 0, conf_sum / nz, 0.0).tolist(),
        "accuracy": np.where(count > 0, acc_sum / nz, 0.0).tolist(),
    }


def ece_from_bins(b: dict[str, list]) -> float:
    count = np.asarray(b["count"], dtype=np.float64)
    gap = np.abs(np.asarray(b["accuracy"]) - np.asarray(b["confidence"]))
    total = count.sum()
    return float((count * gap).sum() / total) if total else 0.0


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE in [0, 1]; 0 for a perfectly calibrated classifier (up to sampling noise)."""
    return ece_from_bins(reliability_bins(probs, labels, bins))


def nll_at_temperature(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of softmax(logits / T) (stable log-sum-exp)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(z)), np.asarray(labels, dtype=np.int64)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on held-out data (Guo et al. 2017).

    One scalar, so accuracy (the argmax) never changes; only the confidence does. The NLL is
    convex in 1/T (a log-sum-exp of a linear function minus a linear one), so a bounded scalar
    search over 1/T finds the global minimum.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"logits must be [N, classes] with N > 0 labels; got {logits.shape} and {labels.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("logits must be finite to fit a temperature")
    res = minimize_scalar(lambda inv: nll_at_temperature(logits, labels, 1.0 / inv), bounds=(1.0 / hi, 1.0 / lo),
                          method="bounded", options={"xatol": 1e-6})
    return float(1.0 / res.x)
