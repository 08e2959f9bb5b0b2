"""[train.finetune]: freezing (BatchNormalization kept in inference mode), gradual unfreezing on
an epoch schedule, per-group learning rates, in both engines, and the course's transfer heads."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from test_train import make_cfg, run
from tfcnn.config import FinetuneConfig, ModelConfig, TrainConfig
from tfcnn.errors import ConfigError
from tfcnn.models import build_model
from tfcnn.train.finetune import Finetuner
from tfcnn.train.optim import build_optimizer

MODEL = {"name": "compact_cnn", "batch_norm": True}  # 5 conv + 5 BN backbone layers, then gap -> logits
BACKBONE = ["s1_c1_conv", "s1_c1_bn", "s2_c1_conv", "s2_c1_bn", "s2_c2_conv", "s2_c2_bn", "s3_c1_conv", "s3_c1_bn", "s3_c2_conv", "s3_c2_bn"]


def compact() -> keras.Model:
    return build_model(ModelConfig(**MODEL), (16, 16, 1), 3, [0.0], [1.0])


def train_cfg(engine: str, finetune: dict, **train):
    opts = {"engine": engine, "epochs": 1, "learning_rate": 0.05, "early_stopping": {"enabled": False}, "finetune": finetune, **train}
    return make_cfg(opts, model_opts=MODEL)


class Snapshots(keras.callbacks.Callback):
    """Trainable backbone layers at every epoch start, and every layer's weights at every epoch end."""

    def __init__(self):
        super().__init__()
        self.trainable: list[list[str]] = []
        self.weights: list[dict[str, list[np.ndarray]]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.trainable.append([n for n in BACKBONE if self.model.get_layer(n).trainable])

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append({l.name: [np.array(w) for w in l.get_weights()] for l in self.model.layers if l.weights})


def initial_weights(cfg) -> dict[str, list[np.ndarray]]:
    """The weights training starts from (the same seed builds the same model)."""
    keras.utils.set_random_seed(cfg.train.seed)
    return {l.name: [np.array(w) for w in l.get_weights()] for l in compact().layers if l.weights}


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_the_plan_splits_backbone_and_head_and_checks_every_value():
    model = compact()
    plan = Finetuner.build(FinetuneConfig(freeze=0.5), model)
    assert [l.name for l in plan.backbone] == BACKBONE and [l.name for l in plan.head] == ["logits"]
    assert plan.frozen_count(0.5) == 5 and plan.frozen_count(1.0) == 10 and plan.frozen_count("s2_c1_bn") == 4
    assert Finetuner.build(FinetuneConfig(), model) is None
    plan.apply(1)
    # the first five frozen; of the rest the convs train, BN stays in inference mode (batch_norm = "frozen")
    assert [l.trainable for l in plan.backbone] == [False] * 5 + [False, True, False, True, False]
    bad = [
        (FinetuneConfig(freeze=1.5), "is a fraction of the backbone; it must be within \\[0, 1\\]"),
        (FinetuneConfig(freeze="s9_conv"), "'s9_conv' is not a backbone layer with weights of this model"),
        (FinetuneConfig(freeze="logits"), "'logits' is not a backbone layer"),
        (FinetuneConfig(freeze=1.0, unfreeze={"0": 0.5}), "unfreeze key '0' must be an epoch number >= 1"),
        (FinetuneConfig(freeze=1.0, unfreeze={"3": 2.0}), "must be within \\[0, 1\\]"),
        (FinetuneConfig(lr_multipliers={"block9*": 0.1}), "'block9\\*' matches no layer with weights"),
        (FinetuneConfig(lr_multipliers={"backbone": -1}), "lr_multipliers.backbone = -1 must be a number >= 0"),
    ]
    for cfg, message in bad:
        with pytest.raises(ConfigError, match=message):
            Finetuner.build(cfg, compact())


@pytest.mark.parametrize("engine", ["tape", "fit"])
def test_frozen_weights_and_bn_statistics_stay_bit_identical(engine, tmp_path):
    """freeze = 0.6: the first 6 backbone layers (three conv + BN pairs) come out of a training
    epoch bit-identical, BN moving mean and variance included; the later ones and the head move.
    A learning-rate multiplier of 0 on s3_c1_* (the engines' per-group rates) keeps its conv and
    BN scale where they were while its BN, not frozen, still updates its statistics."""
    cfg = train_cfg(engine, {"freeze": 0.6, "batch_norm": "train", "lr_multipliers": {"s3_c1_*": 0.0}})
    before = initial_weights(cfg)
    snaps = Snapshots()
    result, _ = run(cfg, tmp_path / engine, callbacks=[snaps])
    after = snaps.weights[-1]
    for name in BACKBONE[:6]:
        assert same(before[name], after[name]), f"{name} moved while frozen"
    assert same(before["s3_c1_conv"], after["s3_c1_conv"]) and same(before["s3_c1_bn"][:2], after["s3_c1_bn"][:2])
    assert not same(before["s3_c1_bn"][2:], after["s3_c1_bn"][2:])
    for name in BACKBONE[8:] + ["logits"]:
        assert not same(before[name], after[name]), f"{name} did not train"
    bn = after["s3_c2_bn"]  # unfrozen with batch_norm = "train": its statistics move
    assert not np.array_equal(before["s3_c2_bn"][2], bn[2])
    assert np.isfinite(result.history["loss"]).all()


@pytest.mark.parametrize("engine", ["tape", "fit"])
def test_gradual_unfreezing_changes_trainable_at_the_scheduled_epochs(engine, tmp_path):
    """freeze everything, thaw the top half at epoch 2 and the rest at epoch 3: the trainable set
    follows the schedule, each layer starts to move in the epoch it thaws (the engines retrace
    their step), and with batch_norm = "frozen" no BN ever moves."""
    cfg = train_cfg(engine, {"freeze": 1.0, "unfreeze": {"2": 0.5, "3": 0.0}}, epochs=3)
    before = initial_weights(cfg)
    snaps = Snapshots()
    run(cfg, tmp_path / engine, callbacks=[snaps])
    convs = [n for n in BACKBONE if n.endswith("conv")]
    assert snaps.trainable == [[], ["s3_c1_conv", "s3_c2_conv"], convs]
    e1, e2, e3 = snaps.weights
    for name in convs:
        assert same(before[name], e1[name])  # all frozen in epoch 1
    assert not same(before["logits"], e1["logits"])
    assert same(e1["s1_c1_conv"], e2["s1_c1_conv"]) and not same(e1["s3_c2_conv"], e2["s3_c2_conv"])
    assert not same(e2["s1_c1_conv"], e3["s1_c1_conv"])  # thawed at epoch 3: it trains now
    for name in BACKBONE:
        if name.endswith("bn"):
            assert same(before[name], e3[name]), f"{name}: BatchNormalization moved with batch_norm = 'frozen'"


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_each_group_gets_its_own_step_size(optimizer):
    """One step with a known gradient: SGD moves each variable by lr * multiplier * g; Adam's first
    step is lr * multiplier * sign(g) (so the multiplier scales the rate: scaling the gradient would
    leave Adam's step unchanged)."""
    model = compact()
    plan = Finetuner.build(FinetuneConfig(lr_multipliers={"backbone": 0.1, "s1_*": 0.0, "head": 2.0}), model)
    tc = TrainConfig(optimizer=optimizer, learning_rate=0.01, momentum=0.0)
    opt = build_optimizer(tc, tc.learning_rate, clipnorm=False)
    variables = model.trainable_variables
    opt.build(variables)
    plan.scale_learning_rates(opt)
    before = [np.array(v) for v in variables]
    opt.apply([keras.ops.ones_like(v) * 0.5 for v in variables], variables)
    seen = set()
    for v, b in zip(variables, before):
        layer = v.path.split("/")[0]
        want = {"s1": 0.0, "lo": 2.0}.get(layer[:2], 0.1) * 0.01 * (0.5 if optimizer == "sgd" else 1.0)
        step = b - np.array(v)
        np.testing.assert_allclose(step, want, rtol=1e-3, atol=1e-9, err_msg=f"{v.path}")
        seen.add(want)
    assert len(seen) == 3


@pytest.mark.parametrize("kind, names", [
    ("linear", ["gap", "logits"]),
    ("mlp", ["gap", "head_dense512", "head_bn512", "head_dense256", "head_bn256", "logits"]),
    ("adapter", ["adapter_conv", "adapter_bn", "gap", "logits"]),
])
def test_the_course_heads_on_a_pretrained_backbone(kind, names):
    model = build_model(
        ModelConfig(name="efficientnet_lite0", weights="none", dropout=0.2, options={"input_size": 0, "classifier": kind}),
        (32, 32, 3), 4,
    )
    plan = Finetuner.build(FinetuneConfig(freeze=1.0), model)
    assert [l.name for l in plan.head] == [n for n in names if n in {l.name for l in model.layers if l.weights}]
    assert plan.backbone[-1].name == "head_bn" and model.output.shape == (None, 4)
    assert {l.name for l in model.layers} >= set(names)
    with pytest.raises(ConfigError, match="classifier = 'deep'; choose one of linear, mlp, adapter"):
        build_model(ModelConfig(name="efficientnet_lite0", weights="none", options={"input_size": 0, "classifier": "deep"}), (32, 32, 3), 4)
