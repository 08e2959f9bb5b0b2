"""`tfcnn lr-find`: the LR range test's ramp, smoothing and suggestion, and a real run on a pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tfcnn.cli import main
from tfcnn.config import from_dict
from tfcnn.errors import ConfigError
from tfcnn.run import LRFind, Run
from tfcnn.train.lr_find import find_lr, schedule, smooth, suggest


def test_schedule_is_geometric_from_start_to_end():
    lrs = schedule(1e-6, 1.0, 7)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    assert np.allclose(lrs[1:] / lrs[:-1], 10.0)


def test_smoothing_is_bias_corrected():
    assert smooth([2.0, 2.0, 2.0], beta=0.9) == pytest.approx([2.0, 2.0, 2.0])  # no pull toward 0
    assert smooth([1.0, 3.0], beta=0.5) == pytest.approx([1.0, (0.25 * 1 + 0.5 * 3) / 0.75])


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = schedule(1e-5, 10.0, 121)
    x = np.log10(lrs)
    # a loss that falls fastest at lr = 1e-2 (a tanh step there) and blows up after lr = 1
    loss = 2.0 - np.tanh(2.0 * (x + 2.0)) + np.where(x > 0, 20 * x**2, 0.0)
    steep, low = suggest(lrs, list(loss))
    assert steep == pytest.approx(1e-2, rel=0.15)
    assert low == pytest.approx(lrs[int(np.argmin(loss))])
    assert suggest(lrs, list(np.linspace(1.0, 2.0, 121))) == (None, pytest.approx(1e-5))  # never fell


def _cfg(npz_path, **train):
    return from_dict({
        "name": "lrf", "report": False, "data": {"source": f"numpy:{npz_path}", "batch_size": 16},
        "model": {"name": "tiny_cnn"}, "train": {"optimizer": "sgd", "momentum": 0.0, "tensorboard": False, **train},
        "export": {"enabled": False},
    })


def test_range_test_on_a_pipeline_writes_the_record_and_never_claims_the_run(npz_path, tmp_path):
    run = Run.create(tmp_path / "run")
    rec = find_lr(_cfg(npz_path), run, start_lr=1e-4, end_lr=1e4, steps=60)
    again = run.read(LRFind)
    assert again.lr == rec.lr and again.suggested_lr == rec.suggested_lr
    assert rec.stopped in ("diverged", "non-finite")  # plain SGD at lr 1e4 cannot stay finite
    assert len(rec.lr) < 60 and rec.lr[0] == pytest.approx(1e-4)
    assert rec.suggested_lr is not None and 1e-4 < rec.suggested_lr < rec.lr[-1]
    assert all(v is None or math.isfinite(v) for v in rec.loss)
    assert not run.has("config") and not run.has("model")  # `tfcnn run` may still use this directory


def test_cli_writes_json_plot_and_bad_options_are_one_line(npz_path, tmp_path, capsys):
    (tmp_path / "p.toml").write_text(
        f'name = "lrf"\nreport = false\n[data]\nsource = "numpy:{npz_path}"\nbatch_size = 16\n'
        '[model]\nname = "tiny_cnn"\n[train]\ntensorboard = false\n[export]\nenabled = false\n'
    )
    out = tmp_path / "out"
    assert main(["lr-find", str(tmp_path / "p.toml"), "--out", str(out), "--steps", "30", "--start", "1e-5", "--end", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 30 and (out / "plots" / "lr_find.png").stat().st_size > 5000
    assert main(["lr-find", str(tmp_path / "p.toml"), "--start", "1", "--end", "0.1"]) == 2
    assert "--start (1) must be below --end (0.1)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--end must be a positive finite number, got nan"):
        find_lr(_cfg(npz_path), Run.create(tmp_path / "x"), end_lr=float("nan"))


def test_report_shows_the_curve_and_suggestion(tiny_run, tmp_path):
    import shutil

    from tfcnn.vis.report import build_report

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    run = Run(run_dir)
    lrs = list(schedule(1e-5, 1.0, 50))
    losses = [float(2 - np.tanh(2 * (np.log10(v) + 3))) for v in lrs]
    run.write(LRFind(start_lr=1e-5, end_lr=1.0, steps=50, lr=lrs, loss=losses, smoothed=smooth(losses, 0.8),
                     suggested_lr=1e-3, min_loss_lr=1.0, stopped="completed", model="tiny_cnn", optimizer="adam", batch_size=32))
    html = build_report(run).read_text()
    assert "LR range test (tfcnn lr-find)" in html and "suggested learning rate <b>1.00e-03</b>" in html
    assert (run_dir / "plots" / "lr_find.png").is_file()
