"""Training stage: both engines, the stopping rules, L2, resume, distribution, run-directory files."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from fakedata import Interrupted, interrupt_after, synthetic_arrays, write_npz
from tfcnn.config import EarlyStoppingConfig, TrainConfig, from_dict
from tfcnn.data.bundle import make_bundle
from tfcnn.errors import ConfigError, TfcnnError
from tfcnn.models import build_model
from tfcnn.run import Run
from tfcnn.train import PatienceRule, PlateauRule, StopRules, TargetLossRule, check_train_config, train
from tfcnn.train.optim import LinearWarmup, build_schedule

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["class_0", "class_1", "class_2"]


def make_cfg(train_opts: dict | None = None, model_opts: dict | None = None, data_opts: dict | None = None):
    train_section = {"epochs": 3, "learning_rate": 0.01, "tensorboard": False, **(train_opts or {})}
    return from_dict(
        {
            "data": {"source": "numpy:synthetic.npz", "batch_size": 32, "val_fraction": 0.2, **(data_opts or {})},
            "model": {"name": "tiny_cnn", **(model_opts or {})},
            "train": train_section,
            "export": {"enabled": False},
            "report": False,
        }
    )


def make_data(cfg):
    # Seed first, as the pipeline does: tf.data shuffle orders depend on the global seed.
    keras.utils.set_random_seed(cfg.train.seed)
    return make_bundle(cfg.data, synthetic_arrays(240, seed=1), synthetic_arrays(60, seed=2), CLASSES, "synthetic")


def run(cfg, run_dir: Path, callbacks=None):
    bundle = make_data(cfg)
    info = bundle.info

    def build():
        return build_model(cfg.model, info.input_shape, info.num_classes, info.mean, info.std)

    return train(cfg, bundle, Run.create(Path(run_dir)), build, callbacks=callbacks), bundle


def max_diff(a: keras.Model, b: keras.Model) -> float:
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a.get_weights(), b.get_weights()))


def read_history(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(run_dir / "history.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


# --------------------------------------------------------------------------- pure stopping rules


def test_patience_rule_min_mode_patience_and_min_delta():
    rule = PatienceRule(monitor="val_loss", patience=2, min_delta=0.05)
    assert rule.mode == "min"
    seq = [1.0, 0.9, 0.88, 0.87, 0.5]  # 0.88 and 0.87 improve by less than min_delta
    stops = []
    for epoch, value in enumerate(seq, start=1):
        rule.update(epoch, value)
        stops.append(rule.should_stop)
        if rule.should_stop:
            break
    assert stops == [False, False, False, True]
    assert rule.best_epoch == 2 and rule.best == pytest.approx(0.9) and rule.stopped_epoch == 4


def test_patience_rule_max_mode_resets_wait_on_improvement():
    rule = PatienceRule(monitor="val_accuracy", mode="auto", patience=2)
    assert rule.mode == "max"
    for epoch, value in enumerate([0.5, 0.4, 0.6, 0.55, 0.58], start=1):
        improved = rule.update(epoch, value)
        assert improved == (epoch in (1, 3))
    assert rule.should_stop and rule.stopped_epoch == 5 and rule.best_epoch == 3
    explicit = PatienceRule(monitor="val_loss", mode="max", patience=0)
    explicit.update(1, 1.0)
    explicit.update(2, 0.5)  # lower is worse in max mode; patience 0 stops at once
    assert explicit.should_stop and explicit.best_epoch == 1


def test_patience_rule_ignores_nan_and_round_trips_state():
    rule = PatienceRule(monitor="val_loss", patience=3)
    rule.update(1, 1.0)
    assert rule.update(2, math.nan) is False and rule.wait == 1
    clone = PatienceRule.from_state(json.loads(json.dumps(rule.state())))
    assert clone == rule


def test_target_loss_rule_needs_consecutive_epochs_and_resets():
    rule = TargetLossRule(target=0.1, patience=3)
    verdicts = [rule.update(e, v) for e, v in enumerate([0.09, 0.08, 0.2, 0.07, 0.06, 0.05, 0.04], start=1)]
    assert verdicts == [False, False, False, False, False, True, True]
    assert rule.stopped_epoch == 6
    at_target = TargetLossRule(target=0.1, patience=1)
    assert at_target.update(1, 0.1) is False  # "below" is strict, as in the course's `avg_loss < target_loss`
    assert at_target.update(2, 0.0999) is True


def test_stop_rules_combine_and_resume_with_raised_patience():
    es = EarlyStoppingConfig(monitor="val_loss", patience=1, target_loss=0.5, target_patience=2)
    rules = StopRules.from_config(es, has_validation=True)
    assert rules.update(1, {"loss": 0.6, "val_loss": 1.0}) is None and rules.improved
    assert rules.update(2, {"loss": 0.4, "val_loss": 0.9}) is None
    assert rules.update(3, {"loss": 0.3, "val_loss": 0.95}) == "early_stopping"  # both fire; patience first
    assert rules.stopped_epoch == 3 and rules.best_epoch == 2
    resumed = StopRules.from_config(EarlyStoppingConfig(monitor="val_loss", patience=5), has_validation=True)
    resumed.load_state(rules.state())
    assert resumed.reason is None and resumed.best_epoch == 2  # raising patience lets training go on
    bad = StopRules.from_config(EarlyStoppingConfig(), has_validation=True)
    assert bad.update(1, {"loss": math.inf, "val_loss": 1.0}) == "non_finite_loss"
    with pytest.raises(ConfigError, match="validation split"):
        StopRules.from_config(EarlyStoppingConfig(monitor="val_loss"), has_validation=False)


def test_plateau_rule_cuts_lr_after_patience():
    rule = PlateauRule(monitor="val_loss", patience=2, factor=0.5, min_lr=0.002)
    lrs, lr = [], 0.01
    for value in [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]:
        lr = rule.update(value, lr)
        lrs.append(lr)
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025, 0.002])


# --------------------------------------------------------------------------- schedules


def test_schedules_follow_their_shapes():
    spe = 10
    lr_at = lambda s, step: float(s(step)) if callable(s) else float(s)  # noqa: E731
    tc = TrainConfig(epochs=10, learning_rate=0.1, schedule="cosine", min_lr_fraction=0.1, warmup_epochs=1)
    s = build_schedule(tc, spe)
    assert lr_at(s, 0) == pytest.approx(0.0) and lr_at(s, 10) == pytest.approx(0.1)
    assert lr_at(s, 100) == pytest.approx(0.01)
    s = build_schedule(TrainConfig(epochs=6, learning_rate=0.1, schedule="step", step_epochs=2, step_factor=0.5), spe)
    assert [lr_at(s, e * spe) for e in range(6)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    s = build_schedule(TrainConfig(epochs=5, learning_rate=0.1, schedule="exponential", decay_rate=0.5), spe)
    assert lr_at(s, 2 * spe) == pytest.approx(0.025)
    s = build_schedule(TrainConfig(epochs=10, learning_rate=0.1, schedule="onecycle"), spe)
    assert lr_at(s, 0) == pytest.approx(0.004) and lr_at(s, 30) == pytest.approx(0.1)
    assert lr_at(s, 99) < 0.001
    s = build_schedule(TrainConfig(learning_rate=0.1, warmup_epochs=2), spe)
    assert isinstance(s, LinearWarmup) and lr_at(s, 9) == pytest.approx(0.05) and lr_at(s, 50) == pytest.approx(0.1)
    again = LinearWarmup.from_config(json.loads(json.dumps(s.get_config())))
    assert lr_at(again, 9) == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        build_schedule(TrainConfig(epochs=2, schedule="cosine", warmup_epochs=2), spe)


# --------------------------------------------------------------------------- engines


def test_l2_term_is_lambda_sum_w2():
    lam = 3e-3
    cfg = make_cfg(model_opts={"l2": lam})
    model = build_model(cfg.model, (16, 16, 1), 3)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    kernels = [w for w in model.weights if w.path.endswith("kernel")]
    assert {k.path for k in kernels} == {"conv1/kernel", "conv2/kernel", "logits/kernel"}
    expected = lam * sum(float(np.sum(np.asarray(k, dtype=np.float64) ** 2)) for k in kernels)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def tape_run(tmp_path_factory):
    cfg = make_cfg(
        {"epochs": 5, "tensorboard": True, "histogram_freq": 2, "early_stopping": {"enabled": False}},
        model_opts={"l2": 1e-2},
    )
    run_dir = tmp_path_factory.mktemp("tape")
    result, bundle = run(cfg, run_dir)
    return cfg, run_dir, result, bundle


def test_tape_engine_learns_and_writes_the_run_directory(tape_run):
    cfg, run_dir, result, _ = tape_run
    loss = result.history["loss"]
    assert result.engine == "tape" and result.epochs_run == 5 and result.stop_reason == "completed"
    assert loss[-1] < 0.6 * loss[0] and result.history["accuracy"][-1] > 0.8
    assert result.images_per_second > 0 and result.replicas == 1
    columns, rows = read_history(run_dir)
    assert columns == HISTORY_COLUMNS and [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert float(rows[-1]["loss"]) == pytest.approx(loss[-1])
    diag = json.loads((run_dir / "diagnostics.json").read_text())
    assert diag["engine"] == "tape" and diag["stop_reason"] == "completed" and len(diag["lr"]) == 5
    norms = diag["gradient_norms"]
    assert set(norms) == {"conv1", "bn1", "conv2", "bn2", "logits", "global"}
    assert all(len(v) == 5 and all(x > 0 for x in v) for v in norms.values())
    # the global norm is the root-sum-square of the layers' norms at every step, so on average
    # it is at most their sum and at least the largest one
    for e in range(5):
        layer = [norms[k][e] for k in norms if k != "global"]
        assert max(layer) * 0.999 <= norms["global"][e] <= sum(layer) * 1.001
    events = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert {p.parent.name for p in events} == {"train", "validation"}
    tags = _event_tags(next(p for p in events if p.parent.name == "train"))
    assert tags["epoch_loss"] == [1, 2, 3, 4, 5] and tags["gradient_norm/global"] == [1, 2, 3, 4, 5]
    assert tags["conv1/kernel"] == [2, 4]  # weight histograms every histogram_freq = 2 epochs
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("epoch-*.index")) == [
        "epoch-3.index",
        "epoch-4.index",
        "epoch-5.index",
    ]
    reloaded = keras.models.load_model(run_dir / "model.keras")
    x = np.asarray(_val_arrays(tape_run)[0][:8], dtype="float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), result.model.predict(x, verbose=0), atol=1e-5)


def _event_tags(path: Path) -> dict[str, list[int]]:
    import tensorflow as tf

    tags: dict[str, list[int]] = {}
    for event in tf.compat.v1.train.summary_iterator(str(path)):
        for value in event.summary.value:
            tags.setdefault(value.tag, []).append(int(event.step))
    return tags


def _val_arrays(tape_run):
    return tape_run[3].arrays["val"]


def test_tape_losses_are_cross_entropy_plus_l2(tape_run):
    """val_loss of the last epoch, recomputed independently from the final weights."""
    cfg, _, result, _ = tape_run
    x, y = _val_arrays(tape_run)
    model = result.model
    logits = np.asarray(model(np.asarray(x, dtype="float32"), training=False), dtype=np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    ce = -logp[np.arange(len(y)), y].mean()
    lam = cfg.model.l2
    l2 = lam * sum(float(np.sum(np.asarray(w, np.float64) ** 2)) for w in model.weights if w.path.endswith("kernel"))
    assert l2 > 0.01  # large enough that leaving it out would fail
    assert result.history["val_loss"][-1] == pytest.approx(ce + l2, rel=1e-4)


def test_fit_engine_learns_and_writes_the_run_directory(tmp_path):
    cfg = make_cfg({"engine": "fit", "epochs": 4, "tensorboard": True, "early_stopping": {"patience": 10}})
    result, _ = run(cfg, tmp_path)
    loss = result.history["loss"]
    assert result.engine == "fit" and result.epochs_run == 4 and loss[-1] < 0.6 * loss[0]
    columns, rows = read_history(tmp_path)
    assert columns == HISTORY_COLUMNS and len(rows) == 4 and all(float(r["lr"]) == pytest.approx(0.01) for r in rows)
    diag = json.loads((tmp_path / "diagnostics.json").read_text())
    assert diag["engine"] == "fit" and diag["best_epoch"] == result.best_epoch and diag["gradient_norms"] is None
    assert not (tmp_path / "checkpoints" / "backup").exists()  # BackupAndRestore cleans up after a finished fit
    assert (tmp_path / "checkpoints" / "last.weights.h5").is_file()
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert keras.models.load_model(tmp_path / "model.keras").count_params() == result.model.count_params()


@pytest.mark.parametrize("engine", ["tape", "fit"])
def test_early_stopping_restores_best_and_target_loss_stops(engine, tmp_path):
    # min_delta larger than any possible gain: epoch 1 is the best, patience 1 stops after epoch 2
    cfg = make_cfg({"engine": engine, "epochs": 5, "early_stopping": {"patience": 1, "min_delta": 100.0}})
    result, bundle = run(cfg, tmp_path / "patience")
    assert (result.stop_reason, result.epochs_run, result.best_epoch) == ("early_stopping", 2, 1)
    x, y = bundle.arrays["val"]
    model = result.model
    val = model.evaluate(np.asarray(x, "float32"), y, verbose=0, return_dict=True)
    assert val["loss"] == pytest.approx(result.history["val_loss"][0], rel=1e-4)  # the best epoch's weights
    assert val["loss"] != pytest.approx(result.history["val_loss"][1], rel=1e-4)
    cfg = make_cfg({"engine": engine, "epochs": 5, "early_stopping": {"enabled": False, "target_loss": 10.0, "target_patience": 2}})
    result, _ = run(cfg, tmp_path / "target")
    assert (result.stop_reason, result.epochs_run) == ("target_loss", 2)
    diag = json.loads((tmp_path / "target" / "diagnostics.json").read_text())
    assert diag["stopped_epoch"] == 2 and diag["stop_reason"] == "target_loss"


def test_tape_resume_after_interruption_matches_uninterrupted(tmp_path):
    opts = {"epochs": 4, "schedule": "cosine", "early_stopping": {"patience": 10}}
    cfg = make_cfg(opts, model_opts={"dropout": 0.3, "l2": 1e-3})
    whole, _ = run(cfg, tmp_path / "whole")
    with pytest.raises(Interrupted):
        run(cfg, tmp_path / "cut", callbacks=[interrupt_after(2)])
    _, rows = read_history(tmp_path / "cut")
    assert len(rows) == 2
    resumed, _ = run(cfg, tmp_path / "cut")
    assert resumed.epochs_run == 4 and max_diff(whole.model, resumed.model) < 1e-5
    assert resumed.history["lr"] == pytest.approx(whole.history["lr"])
    assert resumed.history["loss"] == pytest.approx(whole.history["loss"], rel=1e-5)
    diag = json.loads((tmp_path / "cut" / "diagnostics.json").read_text())
    assert diag["resumed_at"] == [2] and len(diag["gradient_norms"]["global"]) == 4
    # a finished run re-run on its directory trains nothing more and gives the same model
    again, _ = run(cfg, tmp_path / "cut")
    assert again.epochs_run == 4 and max_diff(resumed.model, again.model) == 0.0
    # asking for more epochs continues from the last checkpoint
    more, _ = run(make_cfg({**opts, "epochs": 5}, model_opts={"dropout": 0.3, "l2": 1e-3}), tmp_path / "cut")
    assert more.epochs_run == 5 and more.history["loss"][:4] == pytest.approx(whole.history["loss"], rel=1e-5)
    # a different model in the same directory is refused with the differing key named
    with pytest.raises(TfcnnError, match="model.dropout"):
        run(make_cfg(opts, model_opts={"dropout": 0.1, "l2": 1e-3}), tmp_path / "cut")


def test_fit_resumes_with_backup_and_restore(tmp_path):
    cfg = make_cfg({"engine": "fit", "epochs": 4, "schedule": "exponential", "decay_rate": 0.5, "early_stopping": {"patience": 10}})
    with pytest.raises(Interrupted):
        run(cfg, tmp_path, callbacks=[interrupt_after(2)])
    assert (tmp_path / "checkpoints" / "backup").is_dir()
    _, before = read_history(tmp_path)
    result, _ = run(cfg, tmp_path)
    _, after = read_history(tmp_path)
    assert [int(r["epoch"]) for r in after] == [1, 2, 3, 4] and after[:2] == before
    # the optimizer's step count came back with the weights, so the schedule continues
    assert result.history["lr"] == pytest.approx([0.01 * 0.5**e for e in range(4)], rel=1e-5)
    assert json.loads((tmp_path / "diagnostics.json").read_text())["resumed_at"] == [2]
    assert not (tmp_path / "checkpoints" / "backup").exists()


def test_tape_options_schedule_plateau_smoothing_clipping_weight_decay(tmp_path):
    cfg = make_cfg(
        {
            "epochs": 3,
            "optimizer": "adamw",
            "weight_decay": 1e-3,
            "clipnorm": 0.5,
            "label_smoothing": 0.1,
            "reduce_lr_on_plateau": True,
            "plateau_patience": 1,
            "plateau_factor": 0.5,
            "early_stopping": {"patience": 10, "min_delta": 100.0},
        }
    )
    result, _ = run(cfg, tmp_path)
    # epoch 1 sets the best, epoch 2 cannot beat it by min_delta -> the lr is halved for epoch 3
    assert result.history["lr"] == pytest.approx([0.01, 0.01, 0.005])
    assert all(math.isfinite(v) for v in result.history["loss"]) and result.history["loss"][-1] < result.history["loss"][0]
    warm = make_cfg({"epochs": 3, "schedule": "cosine", "warmup_epochs": 1, "early_stopping": {"enabled": False}})
    result, _ = run(warm, tmp_path / "warm")
    lr = result.history["lr"]
    assert lr[0] < 0.005 and lr[1] == pytest.approx(0.01) and lr[2] < lr[1]


def test_mixed_precision_on_cpu_uses_bfloat16_and_keeps_float32_logits(tmp_path):
    before = keras.mixed_precision.global_policy().name
    cfg = make_cfg({"epochs": 2, "mixed_precision": True})
    result, _ = run(cfg, tmp_path)
    diag = json.loads((tmp_path / "diagnostics.json").read_text())
    assert diag["precision_policy"] == "mixed_bfloat16"
    assert result.model.outputs[0].dtype == "float32"
    assert all(math.isfinite(v) for v in result.history["loss"]) and result.history["loss"][1] < result.history["loss"][0]
    assert keras.mixed_precision.global_policy().name == before  # later stages are not affected
    # what training returns and writes computes in float32 (bfloat16 ops do not convert to TFLite)
    saved = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    for model in (result.model, saved):
        assert {l.compute_dtype for l in model.layers} == {"float32"}
    for a, b in zip(saved.get_weights(), result.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_mixed_precision_run_exports_and_verifies(tmp_path):
    """Before model.keras was written in float32, every export of a mixed_bfloat16 run failed
    in the TFLite converter ("Could not translate MLIR to FlatBuffer" on a bfloat16 Sub)."""
    from tfcnn.export import export_run, verify_version
    from tfcnn.pipeline import run_pipeline

    npz = tmp_path / "synthetic.npz"
    write_npz(npz)
    cfg = from_dict({"name": "bf16", "data": {"source": f"numpy:{npz}", "batch_size": 32, "val_fraction": 0.2},
                     "model": {"name": "tiny_cnn"}, "export": {"enabled": False}, "report": False,
                     "train": {"epochs": 2, "learning_rate": 0.01, "mixed_precision": True, "tensorboard": False}})
    run_pipeline(cfg, tmp_path / "run")
    vd = export_run(tmp_path / "run", formats=["tflite_float32", "onnx"], root=tmp_path / "export")
    report = verify_version(vd, skip_clients=["openvino"])
    assert report["passed"] and all(report["formats"][f]["agreement"] == 1.0 for f in ("tflite_float32", "onnx"))
    assert json.loads((vd / "model_card.json").read_text())["training"]["config"]["mixed_precision"] is True


def test_float16_loss_scaling_path_tracks_float32(tmp_path, monkeypatch):
    """mixed_float16 is chosen only on GPUs; force it on CPU to exercise the loss-scaled step
    (unscale, clip and measure the true gradient, rescale for LossScaleOptimizer)."""
    import tfcnn.train.core as core

    opts = {"epochs": 2, "clipnorm": 1.0, "early_stopping": {"enabled": False}}
    reference, _ = run(make_cfg(opts), tmp_path / "f32")
    monkeypatch.setattr(core, "precision_policy", lambda tc, strategy: "mixed_float16")
    result, _ = run(make_cfg(opts), tmp_path / "f16")
    assert json.loads((tmp_path / "f16" / "diagnostics.json").read_text())["precision_policy"] == "mixed_float16"
    np.testing.assert_allclose(result.history["loss"], reference.history["loss"], rtol=0.05)
    norms = [json.loads((tmp_path / d / "diagnostics.json").read_text())["gradient_norms"]["global"][0] for d in ("f16", "f32")]
    assert norms[0] == pytest.approx(norms[1], rel=0.1)  # unscaled: not 2**15 times larger


def test_train_check_is_registered_and_names_the_allowed_monitors():
    from tfcnn import config as config_mod

    assert config_mod.registered_checks()["train"] is check_train_config
    check_train_config(make_cfg({"early_stopping": {"monitor": "val_accuracy"}}))
    with pytest.raises(ConfigError) as err:
        check_train_config(make_cfg({"early_stopping": {"monitor": "val_acc"}}))
    msg = str(err.value)
    assert "train.early_stopping.monitor = 'val_acc'" in msg and "\n" not in msg
    assert "loss, accuracy, val_loss, val_accuracy" in msg  # the classification task's metric names decide
    with pytest.raises(ConfigError, match="reduce_lr_on_plateau"):
        check_train_config(make_cfg({"reduce_lr_on_plateau": True, "schedule": "cosine"}))


def test_config_errors_are_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="reduce_lr_on_plateau"):
        run(make_cfg({"reduce_lr_on_plateau": True, "schedule": "cosine"}), tmp_path / "a")
    with pytest.raises(ConfigError, match="data.val_fraction"):
        run(make_cfg(data_opts={"val_fraction": 0.0}), tmp_path / "b")
    with pytest.raises(ConfigError, match="early_stopping.monitor = 'val_top5'"):
        run(make_cfg({"early_stopping": {"monitor": "val_top5"}}), tmp_path / "e")
    with pytest.raises(ConfigError, match="TPU"):
        run(make_cfg({"strategy": "tpu"}), tmp_path / "c")
    with pytest.raises(ConfigError, match="/gpu:7"):
        run(make_cfg({"strategy": "mirrored", "devices": ["/gpu:7"]}), tmp_path / "d")


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    import numpy as np
    from test_train import make_cfg, run

    out = {}
    # tape: shuffled data, clipping and L2 (gradients summed over replicas before clipping);
    # fit: Keras' own loop (its distributed input iterates the shuffle differently, so unshuffled)
    cases = {
        "tape": ({"clipnorm": 0.05}, {}),
        "fit": ({"engine": "fit"}, {"shuffle_buffer": 1}),
    }
    for engine, (train_opts, data_opts) in cases.items():
        models = {}
        # multi_worker without TF_CONFIG is a one-worker cluster: same numbers, collective ops
        for strategy in ("default", "mirrored", "multi_worker") if engine == "tape" else ("default", "mirrored"):
            opts = {"epochs": 2, "strategy": strategy, "early_stopping": {"enabled": False}, **train_opts}
            if strategy == "mirrored":
                opts["devices"] = ["/cpu:0", "/cpu:1"]
            cfg = make_cfg(opts, model_opts={"batch_norm": False, "l2": 1e-2}, data_opts=data_opts)
            result, _ = run(cfg, f"{sys.argv[3]}/{engine}-{strategy}")
            models[strategy] = result
        a = models.pop("default")
        for strategy, b in models.items():
            out[f"{engine}-{strategy}"] = {
                "replicas": [a.replicas, b.replicas],
                "max_diff": max(float(np.abs(x - y).max()) for x, y in zip(a.model.get_weights(), b.model.get_weights())),
                "loss": [a.history["loss"], b.history["loss"]],
            }
    print(json.dumps(out))
    """
)


def test_mirrored_on_two_logical_cpus_and_multi_worker_match_single_device(tmp_path):
    """Logical devices must be configured before TensorFlow initialises, hence a subprocess."""
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(REPO), str(REPO / "tests"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(out) == ["fit-mirrored", "tape-mirrored", "tape-multi_worker"]
    for case, got in out.items():
        assert got["replicas"] == [1, 1 if case.endswith("multi_worker") else 2], case
        assert got["max_diff"] < 1e-4, (case, got)
        np.testing.assert_allclose(got["loss"][0], got["loss"][1], rtol=1e-4)


@pytest.mark.parametrize("engine", ["tape", "fit"])
@pytest.mark.parametrize("steps_per_execution", [1, 3, 4])
def test_engines_take_exactly_one_epoch_of_steps_per_epoch(tmp_path, engine, steps_per_execution):
    # 192 training images / batch 32 = 6 steps per epoch. Both engines iterate the repeated
    # training set through one iterator; compiled blocks of steps must still stop at the epoch's
    # end, which the per-step exponential schedule would show (lr at epoch e = 0.01 * 0.5**e).
    cfg = make_cfg(
        {"engine": engine, "epochs": 3, "schedule": "exponential", "decay_rate": 0.5, "steps_per_execution": steps_per_execution}
    )
    result, _ = run(cfg, tmp_path)
    assert result.history["lr"] == pytest.approx([0.01 * 0.5**e for e in range(3)], rel=1e-5)


def test_fit_keeps_one_iterator_when_steps_per_execution_does_not_tile_the_epoch(tmp_path, monkeypatch):
    """6 steps per epoch in calls of 4: Keras would run 8 steps per epoch on one iterator (2 from
    the next epoch); the last call of each epoch now runs 2, on the same repeated iterator (it
    was one iterator per epoch, whose shuffle refill stalls every epoch end)."""
    import tensorflow as tf

    seen = []
    fit = keras.Model.fit

    def spy(self, x=None, *args, **kwargs):
        seen.append(int(tf.data.experimental.cardinality(x)))
        return fit(self, x, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy)
    opts = {"engine": "fit", "epochs": 3, "early_stopping": {"enabled": False}}
    blocks, _ = run(make_cfg({**opts, "steps_per_execution": 4}), tmp_path / "blocks")
    single, _ = run(make_cfg({**opts, "steps_per_execution": 1}), tmp_path / "single")
    assert seen == [int(tf.data.experimental.INFINITE_CARDINALITY)] * 2
    assert blocks.history["loss"] == pytest.approx(single.history["loss"], rel=1e-4)
    assert max_diff(blocks.model, single.model) < 1e-4
    assert blocks.model.train_function is None and "make_train_function" not in vars(blocks.model)


def test_one_repeated_iterator_sees_the_same_epochs_as_one_iterator_per_epoch():
    # What the engines rely on when they keep one iterator over train.repeat(): the same
    # shuffle order and augmentation draws as a fresh iterator per epoch, and no batch that
    # straddles two epochs.
    cfg = make_cfg(data_opts={"augment": {"flip": True, "translate": 0.1}})
    train = make_data(cfg).train
    first = [x.numpy() for _ in range(2) for x, _ in train]
    repeated = iter(make_data(cfg).train.repeat())
    second = [next(repeated)[0].numpy() for _ in range(len(first))]
    assert [len(x) for x in first] == [32] * 6 * 2
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(first[0], first[6])  # epochs are reshuffled / re-augmented


def test_tape_resume_with_augmentation_replays_the_augmentation_draws(tmp_path):
    # The augmentation seeds come from tf.data's Dataset.random, which (like the shuffle) draws a
    # new stream for every pass; resuming replays the finished passes, so epoch 3 of the resumed
    # run flips and shifts exactly the images the uninterrupted run did.
    opts = {"epochs": 3, "early_stopping": {"patience": 10}}
    data = {"augment": {"flip": True, "translate": 0.1}}
    cfg = make_cfg(opts, data_opts=data)
    whole, _ = run(cfg, tmp_path / "whole")
    with pytest.raises(Interrupted):
        run(cfg, tmp_path / "cut", callbacks=[interrupt_after(2)])
    resumed, _ = run(cfg, tmp_path / "cut")
    assert resumed.history["loss"] == pytest.approx(whole.history["loss"], rel=1e-5)
    assert max_diff(whole.model, resumed.model) < 1e-5
