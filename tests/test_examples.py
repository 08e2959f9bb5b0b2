"""Every script in examples/ runs top to bottom, as a user would run it, on a small Fashion-MNIST subset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FASHION_DIR, fashion_available

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fashion_available(), reason=f"Fashion-MNIST not in {FASHION_DIR} (apt-get install dataset-fashion-mnist)"),
]


def run_example(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def fit_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("example_export")
    proc = run_example("export_a_fit_model.py", "--out", str(out), "--train", "6000", "--test", "1000", "--epochs", "5")
    version_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert version_dir == out / "fit_cnn" / "1"
    return version_dir


def test_export_a_fit_model(fit_export):
    report = json.loads((fit_export / "verification.json").read_text())
    assert report["passed"] and set(report["formats"]) == {"savedmodel", "tflite_float32", "tflite_int8", "onnx"}
    assert report["keras"]["accuracy"] > 0.75  # 5 epochs on 6,000 images; chance is 0.10


def test_predict_with_litert_from_the_contract_alone(fit_export, tmp_path):
    from PIL import Image

    from tfcnn.config import DataConfig
    from tfcnn.data import load_data

    x, y = load_data(DataConfig(source="fashion_mnist", test_subset=200, train_subset=100)).arrays["test"]
    paths = []
    for i in range(8):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(x[i, ..., 0], mode="L").save(paths[-1])
    proc = run_example("predict_with_litert.py", str(fit_export), *map(str, paths), "--top-k", "1")
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 8
    labels = json.loads((fit_export / "contract.json").read_text())["labels"]["names"]
    predicted = [line.split(": ", 1)[1].rsplit(" ", 1)[0] for line in lines]
    # The contract-only app path agrees with tfcnn's own LiteRT runner on the same files.
    from tfcnn.export.tflite import LiteRTRunner

    ours = LiteRTRunner(fit_export / "tflite" / "model_int8.tflite").predict(np.repeat(x[:8], 3, axis=-1)).argmax(1)
    assert predicted == [labels[i] for i in ours]


def test_train_your_own_model(tmp_path):
    proc = run_example("train_your_own_model.py", "--out", str(tmp_path), "--train", "6000", "--test", "1000", "--epochs", "4")
    version_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert version_dir == tmp_path / "own_cnn" / "1"
    report = json.loads((version_dir / "verification.json").read_text())
    assert report["passed"] and report["keras"]["accuracy"] > 0.7  # 4 short epochs; chance is 0.10
    assert "trained" in proc.stdout and (tmp_path / "checkpoints").is_dir()
    assert "[tfcnn] train: epoch 1/4" in proc.stderr and "\x1b[" not in proc.stderr + proc.stdout
