"""The pipeline's shape: every config typo fails before data loading, and one run decodes its data once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tfcnn.cli import main

ROOT = Path(__file__).resolve().parents[1]


class _Loaded(Exception):
    pass


@pytest.mark.parametrize(
    "override, expected",
    [
        ('export.formats=["savedmodel", "tflite_int9"]', "export.formats = 'tflite_int9' is not a registered export format (did you mean 'tflite_int8'?)"),
        ("export.thresholds.onnx.agreemnt=0.9", "export.thresholds.onnx.agreemnt is not a limit of onnx"),
        ('model.options={heda = "gdconv"}', "model.options"),
        ("train.early_stopping.monitor=val_acc", "train.early_stopping.monitor"),
        ("data.source=foldr:images", "data.source"),
        ("task=depth_estimation", "task = 'depth_estimation' is not a registered task"),
    ],
)
def test_config_typos_fail_before_any_data_is_loaded(monkeypatch, capsys, tmp_path, override, expected):
    import tfcnn.data
    import tfcnn.data.load

    def never(*args, **kwargs):
        raise _Loaded("data was loaded before the config was validated")

    monkeypatch.setattr(tfcnn.data.load, "load_data", never)
    monkeypatch.setattr(tfcnn.data, "load_data", never)
    monkeypatch.setattr(tfcnn.data, "bundle_for", never)
    code = main(["run", str(ROOT / "pipelines" / "fashion_mnist.toml"), "--out", str(tmp_path / "run"), "--set", override])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # nothing was written either


def _image_folder(root: Path, per_class: int = 14) -> int:
    from PIL import Image

    rng = np.random.default_rng(0)
    n = 0
    for c, name in enumerate(["circle", "square", "noise"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = np.full((16, 16), 30 + 90 * c, np.uint8) + rng.integers(0, 20, (16, 16)).astype(np.uint8)
            Image.fromarray(img, mode="L").save(root / name / f"{i}.png")
            n += 1
    return n


@pytest.mark.slow
def test_folder_source_is_decoded_once_per_run(tmp_path, monkeypatch):
    """Train, int8 calibration, verify and the report share one decoded bundle (issue: 4 loads before)."""
    import tfcnn.data.folder as folder
    from tfcnn.config import from_dict
    from tfcnn.pipeline import run_pipeline

    n_files = _image_folder(tmp_path / "images")
    calls = []
    real = folder.decode_image
    monkeypatch.setattr(folder, "decode_image", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
    cfg = from_dict(
        {
            "name": "folder_once",
            "data": {"source": f"folder:{tmp_path / 'images'}", "batch_size": 8, "val_fraction": 0.2, "test_fraction": 0.3},
            "model": {"name": "tiny_cnn"},
            "train": {"engine": "fit", "epochs": 1, "tensorboard": False},
            "export": {"root": str(tmp_path / "export"), "formats": ["savedmodel", "tflite_int8"], "representative_samples": 10,
                       "latency_runs": 2, "thresholds": {"tflite_int8": {"agreement": 0.0, "max_accuracy_drop": 1.0}}},
            "report": True,
        }
    )
    summary = run_pipeline(cfg, tmp_path / "run")
    assert summary["verification"]["passed"] and Path(summary["report"]).is_file()
    assert len(calls) == n_files, f"{len(calls)} image decodes for {n_files} files"
    assert len(set(calls)) == n_files
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["schema"] == "tfcnn.summary/1"


def test_a_rerun_with_another_engine_is_refused_unless_overwrite(tmp_path, capsys, npz_path):
    """`tfcnn train` twice into one run directory: the second, with another engine, must not replace the first."""
    import shutil

    base = ["train", str(tmp_path / "p.toml"), "--out", str(tmp_path / "run")]
    (tmp_path / "p.toml").write_text(
        f'name = "rerun"\nreport = false\n[data]\nsource = "numpy:{npz_path}"\nbatch_size = 32\n'
        '[model]\nname = "tiny_cnn"\n[train]\nengine = "tape"\nepochs = 1\ntensorboard = false\n'
    )
    assert main(base) == 0
    capsys.readouterr()
    model_bytes = (tmp_path / "run" / "model.keras").read_bytes()
    for name in ("model.keras", "config.json", "metrics.json", "history.csv"):  # one permission policy
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name
    code = main([*base, "--set", "train.engine=fit"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("tfcnn train:")]
    assert code == 2 and len(errors) == 1 and "train.engine = 'tape'" in errors[0] and "--overwrite" in errors[0]
    assert "data: loading" not in err  # refused before any data was decoded
    assert (tmp_path / "run" / "model.keras").read_bytes() == model_bytes  # untouched
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["engine"] == "tape"
    assert main([*base, "--set", "train.engine=fit", "--overwrite"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["engine"] == "fit"
    shutil.rmtree(tmp_path / "run")
