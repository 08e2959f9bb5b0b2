"""`tfcnn tune`: the [tune] search space is checked up front, each trial is a real run, the
search resumes after an interruption, and best.toml is a pipeline file `tfcnn run` accepts."""

from __future__ import annotations

import csv
import tomllib
from pathlib import Path

import pytest

from tfcnn import config as config_mod
from tfcnn.config import from_dict, load
from tfcnn.errors import ConfigError
from tfcnn.run import Run
from tfcnn.tune import parse_space, trial_config, tune

PIPELINES = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.toml"))


def base(npz_path, tune_section: dict, epochs: int = 1) -> dict:
    return {
        "name": "tt",
        "report": False,
        "data": {"source": f"numpy:{npz_path}", "batch_size": 32},
        "model": {"name": "tiny_cnn"},
        "train": {"epochs": epochs, "tensorboard": False, "learning_rate": 0.01},
        "export": {"enabled": False},
        "tune": tune_section,
    }


def test_dotted_keys_under_tune_become_the_space():
    text = '[tune]\nalgorithm = "bayesian"\ntrain.learning_rate = {log_uniform = [1e-4, 1e-2]}\nmodel.width = {choice = [0.5, 1.0]}\n'
    cfg = from_dict(tomllib.loads(text))
    assert cfg.tune.algorithm == "bayesian"
    assert cfg.tune.space == {"train.learning_rate": {"log_uniform": [1e-4, 1e-2]}, "model.width": {"choice": [0.5, 1.0]}}
    assert [d.key for d in parse_space(cfg)] == ["train.learning_rate", "model.width"]


@pytest.mark.parametrize("space, message", [
    ({}, "searches nothing"),
    ({"train.learnig_rate": {"uniform": [0.1, 0.2]}}, "'learnig_rate' is not a setting of [train]"),
    ({"trian.epochs": {"int": [1, 3]}}, "'trian' is not a section"),
    ({"train.learning_rate": {"gaussian": [0, 1]}}, "must be one distribution"),
    ({"train.learning_rate": {"log_uniform": [0.0, 0.1]}}, "log_uniform needs lo > 0"),
    ({"train.learning_rate": {"uniform": [0.2, 0.1]}}, "needs lo < hi"),
    ({"train.learning_rate": {"log_uniform": [1e-3, 100.0]}}, "the value 100.0 is not valid there: train.learning_rate"),
    ({"model.dropout": {"uniform": [0.0, float("nan")]}}, "finite"),
    ({"train.epochs": {"int": [1.5, 3]}}, "whole numbers"),
    ({"model.width": {"choice": [1.0]}}, "at least two different values"),
    ({"train.optimizer": {"choice": ["adam", "adamax"]}}, "'adamax' is not valid there"),
    ({"tune.max_trials": {"int": [1, 3]}}, "cannot be searched"),
])
def test_bad_search_spaces_are_one_line_before_any_trial(npz_path, space, message):
    cfg = from_dict(base(npz_path, {"space": space}))
    with pytest.raises(ConfigError) as err:
        parse_space(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_dumps_writes_a_pipeline_file_that_loads_back_equal(path, tmp_path):
    cfg = load(path)
    out = tmp_path / "again.toml"
    out.write_text(config_mod.dumps(cfg, header="round trip"))
    assert load(out) == cfg


def test_random_search_resumes_after_an_interruption_and_writes_best_toml(npz_path, tmp_path, monkeypatch):
    import tfcnn.pipeline

    cfg = from_dict(base(npz_path, {"algorithm": "random", "max_trials": 3, "seed": 1, "space": {
        "train.learning_rate": {"log_uniform": [1e-3, 3e-2]}, "model.width": {"choice": [0.5, 1.0]}}}))
    real = tfcnn.pipeline.train_stage
    calls = []

    def interrupt_second(tcfg, run, **kw):
        calls.append(tcfg)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user's Ctrl-C (or a killed machine) in trial 1
        return real(tcfg, run, **kw)

    monkeypatch.setattr(tfcnn.pipeline, "train_stage", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        tune(cfg, tmp_path / "t")
    interrupted = calls[1]
    monkeypatch.setattr(tfcnn.pipeline, "train_stage", real)
    summary = tune(cfg, tmp_path / "t")  # resumes: the interrupted trial first, then the last one
    assert summary["trials"] == 3 and summary["finished"] == 3
    rows = list(csv.DictReader((tmp_path / "t" / "results.csv").open()))
    assert [r["status"] for r in rows] == ["COMPLETED"] * 3
    assert float(rows[1]["train.learning_rate"]) == interrupted.train.learning_rate  # the same values re-ran
    for r in rows:  # each trial is a real run whose objective is its best validation accuracy
        run = Run(tmp_path / "t" / "trials" / r["trial"])
        assert float(r["objective"]) == max(run.read_history()["val_accuracy"])
        assert run.config().train.learning_rate == float(r["train.learning_rate"])
    best = max(rows, key=lambda r: float(r["objective"]))
    best_cfg = load(tmp_path / "t" / "best.toml")  # `tfcnn run` accepts it as is
    assert best_cfg.train.learning_rate == float(best["train.learning_rate"]) and best_cfg.model.width == float(best["model.width"])
    assert best_cfg.export == cfg.export and best_cfg.tune == config_mod.TuneConfig()


def test_hyperband_gives_trials_their_bracket_budget(npz_path, tmp_path):
    cfg = from_dict(base(npz_path, {"algorithm": "hyperband", "hyperband_factor": 2, "objective": "val_loss",
                                    "space": {"train.learning_rate": {"log_uniform": [1e-3, 3e-2]}}}, epochs=2))
    summary = tune(cfg, tmp_path / "h")
    rows = list(csv.DictReader((tmp_path / "h" / "results.csv").open()))
    assert summary["finished"] == len(rows) >= 2
    for r in rows:
        assert Run(tmp_path / "h" / "trials" / r["trial"]).config().train.epochs == int(r["epochs"]) <= 2
    assert summary["best"]["objective"] == min(float(r["objective"]) for r in rows)  # val_loss: lower is better


def test_trial_config_never_exports_and_keeps_the_rest(npz_path):
    cfg = from_dict(base(npz_path, {"space": {"model.width": {"choice": [0.5, 1.0]}}}))
    t = trial_config(cfg, {"model.width": 0.5}, epochs=3)
    assert t.model.width == 0.5 and t.train.epochs == 3 and not t.export.enabled and t.data == cfg.data
