"""The CLI turns user mistakes into one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tfcnn.cli import main

ROOT = Path(__file__).parent.parent


def run_cli(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_key_is_one_line(capsys, tmp_path):
    p = tmp_path / "p.toml"
    p.write_text("[train]\nepoch = 3\n")
    code, _, err = run_cli(capsys, "train", p)
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "unknown key 'train.epoch'" in err and "epochs" in err


def test_bad_override(capsys):
    code, _, err = run_cli(capsys, "run", ROOT / "pipelines" / "fashion_mnist.toml", "--set", "train.engine=torch")
    assert code == 2 and "train.engine = 'torch' is not allowed" in err


def test_missing_run_dir(capsys, tmp_path):
    code, _, err = run_cli(capsys, "predict", tmp_path / "nope", tmp_path / "x.png")
    assert code == 2 and "does not exist" in err


def test_missing_model_in_run_dir(capsys, tiny_run, tmp_path):
    import shutil

    broken = tmp_path / "run"
    shutil.copytree(tiny_run, broken)
    (broken / "model.keras").unlink()
    code, _, err = run_cli(capsys, "predict", broken, tmp_path / "x.png")
    assert code == 2 and "model.keras is missing" in err


def test_predict_top_k_with_labels(capsys, tiny_run, tmp_path, npz_path):
    import numpy as np
    from PIL import Image

    data = np.load(npz_path)
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(data["x_test"][i][..., 0]).save(path)
        paths.append(path)
    code, out, _ = run_cli(capsys, "predict", tiny_run, *paths, "--top-k", "2", "--json")
    assert code == 0
    import json

    results = json.loads(out)
    assert [len(r["top_k"]) for r in results] == [2, 2, 2]
    assert all(r["top_k"][0]["label"].startswith("class_") for r in results)
    correct = sum(r["top_k"][0]["class_id"] == int(data["y_test"][i]) for i, r in enumerate(results))
    assert correct >= 2  # the tiny run learns the synthetic blobs


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "tfcnn", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for cmd in ("run", "train", "evaluate", "predict", "export", "verify", "benchmark", "explain", "inspect", "report"):
        assert cmd in out.stdout
