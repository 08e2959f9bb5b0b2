"""The main job end to end on a real Fashion-MNIST subset: `tfcnn run` from the pipeline file to a verified export."""

from __future__ import annotations

import json

import pytest

from conftest import FASHION_DIR, fashion_available
from tfcnn.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fashion_available(), reason=f"Fashion-MNIST not in {FASHION_DIR} (apt-get install dataset-fashion-mnist)"),
]


def test_main_pipeline_on_a_subset(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(
        [
            "run", "pipelines/fashion_mnist.toml", "--out", str(run_dir),
            "--set", "data.train_subset=3000", "--set", "data.test_subset=600",
            "--set", "train.epochs=3", "--set", "train.warmup_epochs=0", "--set", "data.batch_size=32",
            "--set", f"export.root={tmp_path / 'export'}",
            "--set", 'export.formats=["savedmodel", "tflite_float32", "tflite_int8", "onnx"]',
            "--set", "export.representative_samples=100", "--set", "export.latency_runs=5",
            # A 3-epoch model has many near-ties that int8 rounding flips; the 98.5% default is
            # checked on converged models in test_export.py, here we only need the plumbing.
            "--set", "export.thresholds.tflite_int8.agreement=0.9",
        ]
    )
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out + captured.err
    # Not a terminal: one line per epoch/stage, no progress-bar redraws or ANSI escape codes.
    assert "\x1b[" not in out + captured.err and "\r" not in out + captured.err
    assert "[tfcnn] train: epoch" in captured.err and "[tfcnn] export: onnx done" in captured.err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test_accuracy", "params", "train_seconds", "epochs_run", "engine"):
        assert key in metrics
    assert metrics["engine"] == "tape" and metrics["epochs_run"] >= 1
    assert metrics["params"] < 100_000
    # 3 short epochs on 2,700 images (BatchNorm statistics still settling); chance is 0.10
    assert metrics["test_accuracy"] > 0.50
    for name in ("config.json", "data.json", "history.csv", "model.keras", "evaluation.json", "report.html"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "plots").glob("*.png"))
    data = json.loads((run_dir / "data.json").read_text())
    assert data["class_names"][0] == "T-shirt/top" and data["input_shape"] == [28, 28, 1]
    version_dir = tmp_path / "export" / "fashion_mnist" / "1"
    verification = json.loads((version_dir / "verification.json").read_text())
    assert set(verification["formats"]) >= {"savedmodel", "tflite_float32", "tflite_int8", "onnx"}
    assert verification["formats"]["onnx"]["agreement"] == 1.0 and verification["formats"]["onnx"]["max_abs_diff"] <= 1e-5
    assert verification["formats"]["savedmodel"]["agreement"] == 1.0
    assert "tflite_int8" in out and "test accuracy" in out  # the results table
