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


def test_pipeline_fits_t_on_validation_and_every_artifact_returns_the_scaled_softmax(npz_path, tmp_path):
    """evaluate.temperature_scaling: T from the validation logits, test ECE before/after in the
    evaluation, and the exports (contract, SavedModel, TFLite) return softmax(logits / T)."""
    import json

    import keras

    from tfcnn.config import from_dict
    from tfcnn.export.savedmodel import predict_savedmodel
    from tfcnn.pipeline import run_pipeline
    from tfcnn.run import Evaluation, Run

    cfg = from_dict({
        "name": "ts", "report": False,
        "data": {"source": f"numpy:{npz_path}", "batch_size": 32, "val_fraction": 0.25},
        "model": {"name": "tiny_cnn"},
        "train": {"engine": "fit", "epochs": 4, "learning_rate": 0.02, "tensorboard": False},
        "evaluate": {"temperature_scaling": True, "embedding_samples": 0},
        "export": {"root": str(tmp_path / "export"), "formats": ["savedmodel", "tflite_float32"], "latency_runs": 2},
    })
    summary = run_pipeline(cfg, tmp_path / "run")
    run = Run(tmp_path / "run")
    cal = run.read(Evaluation).details["calibration"]
    t = cal["temperature"]
    assert 0.05 < t < 20 and t != 1.0 and 0 <= cal["ece_scaled"] <= 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["temperature"] == t and metrics["ece_scaled"] == cal["ece_scaled"]
    vd = tmp_path / "export" / "ts" / "1"
    assert json.loads((vd / "contract.json").read_text())["output"]["temperature"] == pytest.approx(t)
    x = np.load(npz_path)["x_test"][:20]
    logits = keras.models.load_model(tmp_path / "run" / "model.keras", compile=False).predict(x.astype("float32"), verbose=0)
    want = np.exp((logits - logits.max(1, keepdims=True)) / t)
    want /= want.sum(1, keepdims=True)
    got = predict_savedmodel(vd, np.repeat(x, 3, axis=-1))["probabilities"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert summary["verification"]["passed"]  # the Keras reference of verify applies the same T
