"""Model anatomy: hand-computed parameters and MACs, and receptive fields by formula and by measurement."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import keras
import pytest

from tfcnn.cli import main
from tfcnn.config import ModelConfig, from_dict
from tfcnn.errors import TfcnnError
from tfcnn.models import build_model
from tfcnn.run import Run
from tfcnn.util import log
from tfcnn.vis.inspect import empirical_receptive_fields, format_summary, format_table, inspect_model, inspect_run


@contextmanager
def tfcnn_log() -> Iterator[list[str]]:
    """The messages of the ``tfcnn`` logger at INFO, however logging is configured (the CLI's handler included)."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def conv_stack(strides: tuple[int, ...], padding: str, size: int = 32) -> keras.Model:
    inputs = keras.Input((size, size, 1))
    x = inputs
    for i, s in enumerate(strides):
        x = keras.layers.Conv2D(4, 3, strides=s, padding=padding, activation="relu", name=f"layer{i + 1}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="logits")(x))


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in rows}


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize(
    ("strides", "expected"),
    [((1, 1, 1), [3, 5, 7]), ((1, 2, 1), [3, 5, 9])],  # the course's examples (errata: not 3, 7, 11)
)
def test_course_receptive_fields_formula_and_measurement_agree(strides, expected, padding):
    rows = by_name(inspect_model(conv_stack(strides, padding)))
    for i, rf in enumerate(expected, start=1):
        row = rows[f"layer{i}"]
        assert row["rf"] == rf
        assert row["rf_measured"] == [rf, rf] and not row["rf_clipped"]
        assert row["rf_check"] == "ok"


def test_pooling_dilation_and_a_real_model_agree():
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)  # 3
    x = keras.layers.MaxPooling2D(2, name="p1")(x)  # 3 + 1 * 1 = 4, jump 2
    x = keras.layers.Conv2D(4, 3, dilation_rate=2, padding="same", name="c2")(x)  # 4 + 4 * 2 = 12
    x = keras.layers.AveragePooling2D(3, strides=2, name="p2")(x)  # 12 + 2 * 2 = 16, jump 4
    x = keras.layers.Conv2D(4, 1, name="c3")(x)  # 1x1: unchanged
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    rows = by_name(inspect_model(model))
    assert [rows[n]["rf"] for n in ("c1", "p1", "c2", "p2", "c3")] == [3, 4, 12, 16, 16]
    assert all(rows[n]["rf_check"] == "ok" for n in ("c1", "p1", "c2", "p2", "c3"))
    tiny = inspect_model(build_model(ModelConfig(name="tiny_cnn"), (16, 16, 1), 3))
    checks = {r["name"]: r["rf_check"] for r in tiny if r["rf"] is not None and r["name"] != "image"}
    assert checks and set(checks.values()) == {"ok"}
    assert by_name(tiny)["pool2"]["rf"] == 10


@keras.saving.register_keras_serializable(package="tfcnn_tests")
class Blur5(keras.layers.Layer):
    """A 5x5 box blur the formula knows nothing about: the measurement must notice it."""

    def call(self, x):
        return keras.ops.average_pool(x, pool_size=5, strides=1, padding="same")


def test_measurement_flags_what_the_formula_misses():
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = Blur5(name="blur")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="c2")(x)
    # squeeze-and-excitation: the gate depends on the whole map
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x)
    s = keras.layers.Dense(4, activation="sigmoid", name="excite")(s)
    gated = keras.layers.Multiply(name="gate")([x, s])
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(gated)))
    rows = by_name(inspect_model(model))
    assert rows["c1"]["rf_check"] == "ok"
    assert rows["blur"]["rf"] == 3 and rows["blur"]["rf_measured"] == [7, 7]
    assert rows["blur"]["rf_check"] == "MISMATCH"
    assert rows["c2"]["rf_measured"] == [9, 9] and rows["c2"]["rf_check"] == "MISMATCH"
    assert rows["gate"]["rf_check"] == "global" and rows["gate"]["rf_clipped"]


def test_structural_probe_ignores_dead_units_and_argmax():
    # All-negative weights: every ReLU output is zero, and max pooling routes gradients to one
    # pixel per window; a naive gradient would see nothing. The probe still sees the structure.
    inputs = keras.Input((20, 20, 1))
    x = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name="c1",
                            kernel_initializer=keras.initializers.Constant(-1.0))(inputs)
    x = keras.layers.MaxPooling2D(2, name="p1")(x)
    x = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name="c2",
                            kernel_initializer=keras.initializers.Constant(-1.0))(x)
    model = keras.Model(inputs, x)
    measured, probe = empirical_receptive_fields(model)
    assert measured["c1"]["extent"] == [3, 3]
    assert measured["p1"]["extent"] == [4, 4]
    assert measured["c2"]["extent"] == [8, 8]
    assert min(probe) >= 20


def small_model() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.SeparableConv2D(6, 3, padding="valid", name="sep")(x)
    x = keras.layers.Conv2D(4, 1, groups=2, use_bias=False, name="grouped")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x), name="small")


# Hand computation (MACs = multiply-accumulates per image):
#   conv     8x8x4 out, 3x3x3 window:   8*8*4*27 = 6912;  params 3*3*3*4 + 4 = 112
#   bn       4 gamma, beta, mean, var:            0;  params 16 (8 trainable)
#   pool     4x4x4:                               0
#   dw       4x4x4 out, 3x3 window:     4*4*4*9 =  576;  params 3*3*4 + 4 = 40
#   sep      2x2 out: depthwise 2*2*4*9 = 144 + pointwise 2*2*4*6 = 96 -> 240;  params 36 + 24 + 6 = 66
#   grouped  1x1, 2 groups of 3 in -> 2 out: 2*2*4*3 = 48;  params 1*1*3*4 = 12
#   logits   4 -> 5:                       4*5 =   20;  params 25
HAND = {
    "conv": (6912, 112),
    "bn": (0, 16),
    "pool": (0, 0),
    "dw": (576, 40),
    "sep": (240, 66),
    "grouped": (48, 12),
    "gap": (0, 0),
    "logits": (20, 25),
}


def test_params_and_macs_match_hand_computation():
    rows = by_name(inspect_model(small_model(), empirical=False))
    for name, (macs, params) in HAND.items():
        assert (rows[name]["macs"], rows[name]["params"]) == (macs, params), name
    assert rows["bn"]["trainable_params"] == 8
    assert rows["sep"]["output_shape"] == [None, 2, 2, 6]
    assert rows["sep"]["rf_check"] == "n/a"  # empirical=False: nothing measured
    assert sum(r["macs"] for r in rows.values()) == 7796


def small_run(tmp_path: Path) -> Path:
    run = Run.create(tmp_path / "run")
    run.save_config(from_dict({"name": "small"}))
    small_model().save(run.path("model"))
    return run.root


def test_inspect_run_writes_json_and_logs_a_table(tmp_path: Path):
    run_dir = small_run(tmp_path)
    with tfcnn_log() as lines:
        summary = inspect_run(run_dir)
    printed = "\n".join(lines)
    saved = json.loads((run_dir / "inspect.json").read_text())
    assert saved["total_macs"] == 7796 and saved["total_flops"] == 2 * 7796
    assert saved["total_params"] == sum(p for _, p in HAND.values())
    assert saved["trainable_params"] == saved["total_params"] - 8
    assert saved == json.loads(json.dumps(summary))
    assert "macs" in saved["conventions"]
    assert "RF measured" in printed and "sep" in printed and "7,796 MACs" in printed
    assert format_summary(summary) in printed
    assert format_table(saved["layers"]).splitlines()[0].startswith("layer")
    with tfcnn_log() as lines:
        assert main(["inspect", str(run_dir)]) == 0  # the CLI entry shows the same table
    assert "RF formula" in "\n".join(lines)


def test_a_missing_or_corrupt_model_is_one_line_saying_retrain(tmp_path: Path):
    from tfcnn.models.saved import load_trained_model

    run_dir = small_run(tmp_path)
    model_path = run_dir / "model.keras"
    model_path.write_bytes(b"not a keras zip")
    for fn in (load_trained_model, inspect_run):
        with pytest.raises(TfcnnError) as err:
            fn(run_dir)
        msg = str(err.value)
        assert str(model_path) in msg and "re-run training" in msg and "\n" not in msg
    model_path.unlink()
    with pytest.raises(TfcnnError, match="model.keras is missing; re-run training"):
        load_trained_model(run_dir)
    with pytest.raises(TfcnnError, match="does not exist"):
        inspect_run(tmp_path / "nope")
