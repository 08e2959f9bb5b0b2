"""Shared fixtures: a synthetic .npz data set and a small trained run directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

from fakedata import write_npz  # noqa: E402

FASHION_DIR = Path(os.environ.get("TFCNN_DATA_DIR", "/usr/share/datasets/fashion-mnist"))


def fashion_available() -> bool:
    return (FASHION_DIR / "train-images-idx3-ubyte.gz").exists() or (FASHION_DIR / "train-images-idx3-ubyte").exists()


@pytest.fixture(scope="session")
def npz_path(tmp_path_factory) -> Path:
    """16x16 grayscale, 3 classes, 240 train / 90 test images, learnable in a few epochs."""
    return write_npz(tmp_path_factory.mktemp("data") / "synthetic.npz")


@pytest.fixture(scope="session")
def npz_rgb_path(tmp_path_factory) -> Path:
    return write_npz(tmp_path_factory.mktemp("data_rgb") / "synthetic_rgb.npz", channels=3)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, npz_path) -> Path:
    """A trained tiny_cnn run directory (config.json, data.json, model.keras, history.csv, metrics.json).

    Built through the real pipeline stages so export/vis tests see exactly what users get.
    Treat it as read-only: copy it before changing anything.
    """
    from tfcnn.pipeline import run_pipeline
    from tfcnn.config import from_dict

    cfg = from_dict(
        {
            "name": "tiny",
            "data": {"source": f"numpy:{npz_path}", "batch_size": 32, "val_fraction": 0.2},
            "model": {"name": "tiny_cnn"},
            "train": {"engine": "fit", "epochs": 6, "learning_rate": 0.01, "tensorboard": False},
            "export": {"enabled": False},
            "report": False,
        }
    )
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    run_pipeline(cfg, run_dir)
    return run_dir


@pytest.fixture(scope="session")
def tiny_version(tmp_path_factory, tiny_run) -> Path:
    """tiny_run exported to savedmodel, tflite_float32, tflite_int8 and onnx (from a copy of the
    run: tiny_run stays read-only). Shared and read-only too: copy the directory before verifying
    it or changing a file (its card still names the same reference run)."""
    import shutil

    from tfcnn.export import export_run

    base = tmp_path_factory.mktemp("tiny_version")
    shutil.copytree(tiny_run, base / "run")
    return export_run(base / "run", formats=["savedmodel", "tflite_float32", "tflite_int8", "onnx"], root=base / "export")

