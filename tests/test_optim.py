"""Optimizers and schedules from [train]: each optimizer trains (in both engines between them),
weight EMA ends in the averaged weights, gradient accumulation updates once per N batches and
the schedule counts those updates, and cosine with warm restarts restarts where it should."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from test_train import make_cfg, read_history, run
from tfcnn.config import TrainConfig
from tfcnn.errors import ConfigError
from tfcnn.train import check_train_config
from tfcnn.train.optim import build_optimizer, build_schedule

NO_RESTORE = {"early_stopping": {"restore_best": False}}


@pytest.mark.parametrize("engine, optimizer, opts", [
    ("tape", "sgd", {"nesterov": True, "momentum": 0.9, "learning_rate": 0.05}),
    ("fit", "adam", {}),
    ("tape", "adamw", {"weight_decay": 1e-4}),
    ("fit", "rmsprop", {"learning_rate": 0.003}),
    ("tape", "adagrad", {"learning_rate": 0.1}),
    ("fit", "lion", {"learning_rate": 0.001}),
])
def test_every_optimizer_trains(engine, optimizer, opts, tmp_path):
    cfg = make_cfg({"engine": engine, "optimizer": optimizer, "epochs": 3, **opts})
    result, _ = run(cfg, tmp_path / "r")
    _, rows = read_history(tmp_path / "r")
    losses = [float(r["loss"]) for r in rows]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], (optimizer, losses)
    opt = build_optimizer(cfg.train, 0.01)
    assert type(opt).__name__.lower() == optimizer.replace("adamw", "adamw")
    if optimizer == "sgd":
        assert opt.nesterov is True


def _checkpoint(run_dir):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints"))
    names = reader.get_variable_to_shape_map()
    model = [reader.get_tensor(k) for k in sorted(names, key=_index) if k.startswith("model_variables/")]
    opt = {k: reader.get_tensor(k) for k in names if k.startswith("optimizer/")}
    return model, opt


def _index(key: str) -> int:
    parts = key.split("/")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1


def test_tape_ema_replaces_the_weights_by_the_optimizers_averages(tmp_path):
    cfg = make_cfg({"engine": "tape", "use_ema": True, "ema_momentum": 0.9, "epochs": 2, **NO_RESTORE})
    result, _ = run(cfg, tmp_path / "r")
    raw_last, opt = _checkpoint(tmp_path / "r")  # written at the end of epoch 2, before the averages were swapped in
    slots = [v for v in opt.values() if v.ndim]
    moved = 0
    for w in result.model.trainable_weights:
        w = np.asarray(w)
        assert any(s.shape == w.shape and np.allclose(s, w, atol=1e-7) for s in slots), w.shape  # it is an EMA slot
        raw = [r for r in raw_last if r.shape == w.shape]
        moved += not any(np.allclose(r, w, atol=1e-7) for r in raw)
    assert moved >= len(result.model.trainable_weights) - 1  # and not the raw weights the last step left


@pytest.mark.parametrize("engine", ["tape", "fit"])
def test_ema_changes_the_final_weights_in_both_engines(engine, tmp_path):
    ema, _ = run(make_cfg({"engine": engine, "use_ema": True, "ema_momentum": 0.9, "epochs": 2, **NO_RESTORE}), tmp_path / "e")
    raw, _ = run(make_cfg({"engine": engine, "epochs": 2, **NO_RESTORE}), tmp_path / "raw")
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(ema.model.trainable_weights, raw.model.trainable_weights))
    assert diff > 1e-4 and all(np.isfinite(np.asarray(w)).all() for w in ema.model.weights)


def test_ema_with_restore_best_is_refused():
    with pytest.raises(ConfigError, match="train.use_ema averages the weights .* set train.early_stopping.restore_best = false"):
        check_train_config(make_cfg({"use_ema": True}))
    with pytest.raises(ConfigError, match="train.nesterov applies to optimizer = 'sgd' only"):
        check_train_config(make_cfg({"nesterov": True}))


@pytest.mark.parametrize("engine", ["tape", "fit"])
def test_gradient_accumulation_updates_once_per_n_batches(engine, tmp_path):
    cfg = make_cfg({"engine": engine, "gradient_accumulation_steps": 2, "epochs": 2, "steps_per_execution": 1})
    result, bundle = run(cfg, tmp_path / "r")
    steps = sum(1 for _ in bundle.train)  # batches per epoch
    assert build_optimizer(cfg.train, 0.01).gradient_accumulation_steps == 2
    if engine == "tape":
        _, opt = _checkpoint(tmp_path / "r")
        # Keras counts every batch in _iterations and reports updates as _iterations // N (what schedules see)
        assert int(opt["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == 2 * steps
    _, rows = read_history(tmp_path / "r")
    assert all(math.isfinite(float(r["loss"])) for r in rows)


def test_schedules_count_updates_under_accumulation_and_restart_like_sgdr():
    lr_at = lambda s, step: float(s(step))  # noqa: E731
    plain = build_schedule(TrainConfig(epochs=4, learning_rate=0.1, schedule="cosine"), 10)
    accum = build_schedule(TrainConfig(epochs=4, learning_rate=0.1, schedule="cosine", gradient_accumulation_steps=2), 10)
    assert plain.decay_steps == 40 and accum.decay_steps == 20  # 5 updates per epoch of 10 batches
    s = build_schedule(TrainConfig(epochs=7, learning_rate=0.1, schedule="cosine_restarts", restart_epochs=1,
                                   restart_mult=2.0, restart_decay=0.5), 10)
    assert lr_at(s, 0) == pytest.approx(0.1) and lr_at(s, 5) == pytest.approx(0.05)  # half-way down cycle 1
    assert lr_at(s, 9) < 0.01 and lr_at(s, 10) == pytest.approx(0.05)  # restart at 10 steps, decayed by 0.5
    assert lr_at(s, 30) == pytest.approx(0.025)  # the second cycle is 20 steps long
    default = build_schedule(TrainConfig(epochs=9, learning_rate=0.1, schedule="cosine_restarts"), 10)
    assert default.first_decay_steps == 30  # a third of training
