"""Temperature scaling: the fitted T recovers a known over-confidence and never changes the argmax."""

from __future__ import annotations

import numpy as np
import pytest

from tfcnn.evaluate.calibration import expected_calibration_error, fit_temperature, nll_at_temperature


def _calibrated_sample(n: int = 20000, k: int = 10, seed: int = 0):
    """Labels drawn from softmax(z): z is calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, size=(n, k))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(k, p=row) for row in p])
    return z, labels


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_fitted_temperature_undoes_a_known_scaling(scale):
    z, labels = _calibrated_sample()
    t = fit_temperature(z * scale, labels)  # over-confident (scale > 1) or under-confident (< 1) logits
    assert t == pytest.approx(scale, rel=0.05)
    assert nll_at_temperature(z * scale, labels, t) <= nll_at_temperature(z * scale, labels, 1.0) + 1e-9


def test_scaling_lowers_ece_and_keeps_every_prediction():
    z, labels = _calibrated_sample(seed=1)
    over = z * 3.0
    t = fit_temperature(over, labels)

    def softmax(a):
        e = np.exp(a - a.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    before, after = softmax(over), softmax(over / t)
    assert (before.argmax(1) == after.argmax(1)).all()
    assert expected_calibration_error(after, labels) < 0.02 < expected_calibration_error(before, labels)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="finite"):
        fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match="N > 0"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0))
