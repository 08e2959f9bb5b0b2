"""`tfcnn inspect`: per-layer output shapes, parameters, multiply-adds and receptive fields.

Conventions:

* ``macs`` counts multiply-accumulates of convolutions (standard, depthwise, separable,
  transposed) and dense layers only, for one image: a k x k conv producing H x W x C_out from
  C_in channels costs H * W * C_out * k * k * C_in / groups. Bias adds, batch norm (foldable into
  the conv at export), activations, pooling and merges are not counted. ``flops`` = 2 * macs
  (one multiply plus one add), the other common convention.
* The theoretical receptive field comes from the course formula
  ``r_l = r_{l-1} + (k_l - 1) * prod(s_1 .. s_{l-1})`` with pooling counted as a kernel with a
  stride (``tfcnn.models.conv_math.model_receptive_fields``; vertical extent, square kernels).
* The empirical receptive field is measured: a copy of the model's convolutional part has every
  kernel set to a positive constant, biases and batch-norm shifts set to zero, activations made
  linear, input normalisation removed, max pooling replaced by average pooling over the same
  window and multiplicative gates (squeeze-and-excitation) replaced by additions. The gradient of
  one centre unit (summed over channels) with respect to a positive input is then a sum of
  positive products over every path that exists, so it is non-zero exactly on the structural
  receptive field: no zero can come from a dead ReLU, a max-pool's argmax or weights that happen
  to cancel. The extent of the non-zero region is reported per layer and compared with the
  formula. The probe input is made large enough that the theoretical field fits; a field that
  still covers the whole probe means global context inside the body (e.g. squeeze-and-excitation),
  which the formula does not model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcnn.models.conv_math import model_receptive_fields
from tfcnn.models.saved import load_trained_model
from tfcnn.run import Run
from tfcnn.util import keras_verbose, log

CONVENTIONS = {
    "macs": "multiply-accumulates of conv/depthwise/separable/transposed-conv/dense layers per image; "
    "BN, activations, pooling and merges not counted",
    "flops": "2 * macs",
    "rf": "course formula r_l = r_{l-1} + (k_l - 1) * prod(earlier strides), pooling as kernels with strides "
    "(vertical extent)",
    "rf_measured": "extent [h, w] of the non-zero input gradient of one centre unit in a positive-weight, "
    "linear, average-pooling copy of the model ('+' in the table: reaches the probe border)",
}

_POINTWISE_TO_IDENTITY = (
    keras.layers.Normalization,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.PReLU,
    keras.layers.ELU,
    keras.layers.Softmax,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.Rescaling,
)


# --------------------------------------------------------------------------- shapes, params, MACs


def _output_shape(layer: keras.layers.Layer) -> list[int | None] | None:
    try:
        return list(layer.output.shape)
    except (AttributeError, ValueError):  # shared layer called more than once
        return None


def _prod(shape) -> int:
    return int(math.prod(int(d) for d in shape))


def layer_macs(layer: keras.layers.Layer) -> int:
    """Multiply-accumulates of one layer for one image (nested models: the sum of their layers)."""
    if isinstance(layer, keras.Model):
        return sum(layer_macs(inner) for inner in layer.layers)
    out = _output_shape(layer)
    if out is None or any(d is None for d in out[1:]):
        return 0
    if isinstance(layer, keras.layers.Conv2DTranspose):
        kh, kw, c_out, _ = layer.kernel.shape  # every input pixel scatters a kh x kw x C_out patch
        return _prod(layer.input.shape[1:]) * kh * kw * c_out
    if isinstance(layer, keras.layers.SeparableConv2D):
        kh, kw, c_in, mult = layer.depthwise_kernel.shape
        spatial = _prod(out[1:-1])
        return spatial * c_in * mult * kh * kw + spatial * c_in * mult * out[-1]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel.shape[:2]  # each output element reads one channel's kh x kw window
        return _prod(out[1:]) * kh * kw
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        return _prod(out[1:]) * _prod(layer.kernel.shape[:-1])  # kernel: (*k, C_in / groups, C_out)
    if isinstance(layer, keras.layers.Dense):
        return _prod(out[1:]) * int(layer.kernel.shape[0])
    return 0


def _trainable_params(layer: keras.layers.Layer) -> int:
    return sum(_prod(w.shape) for w in layer.trainable_weights)


# --------------------------------------------------------------------------- receptive fields


def theoretical_receptive_fields(model: keras.Model) -> dict[str, tuple[int, int]]:
    """Layer name -> (receptive field, cumulative stride) by the course formula, for 4-D feature maps."""
    return model_receptive_fields(model)


def _probe_clone(layer: keras.layers.Layer, dtype: str = "float32") -> keras.layers.Layer:
    """Clone a layer for the structural probe: linear, average pooling, no normalisation."""
    if isinstance(layer, _POINTWISE_TO_IDENTITY):
        return keras.layers.Identity(name=layer.name, dtype=dtype)
    if isinstance(layer, keras.layers.Multiply):
        # Same dependency structure (elementwise, broadcasting), but products of positive maps
        # square their magnitude at every gate and overflow; sums stay in range.
        return keras.layers.Add(name=layer.name, dtype=dtype)
    cfg = layer.get_config()
    cls = type(layer)
    if isinstance(layer, keras.layers.MaxPooling2D):
        cls = keras.layers.AveragePooling2D
    elif isinstance(layer, keras.layers.GlobalMaxPooling2D):
        cls = keras.layers.GlobalAveragePooling2D
    if "activation" in cfg:
        cfg["activation"] = "linear"
    cfg["dtype"] = dtype
    try:
        return cls.from_config(cfg)
    except Exception:  # a custom layer that cannot change dtype: keep it as it is (inputs get cast)
        return type(layer).from_config(layer.get_config())


def _set_positive_weights(model: keras.Model) -> None:
    for v in model.weights:
        if not np.issubdtype(np.dtype(v.dtype), np.floating):
            continue  # seed-generator state and other integer bookkeeping
        name = v.path.rsplit("/", 1)[-1]
        shape = tuple(v.shape)
        if name in ("bias", "beta", "moving_mean") or name.endswith("_bias"):
            value = np.zeros(shape)
        elif name == "moving_variance":
            value = np.ones(shape)
        elif len(shape) == 4:
            # sqrt(kh * kw) / fan-in: activations grow and edge-of-field gradients shrink by only
            # sqrt(kh * kw) per layer, so neither overflows nor flushes to zero in float32.
            value = np.full(shape, math.sqrt(shape[0] * shape[1]) / max(_prod(shape[:-1]), 1))
        elif len(shape) >= 2:
            value = np.full(shape, 1.0 / max(_prod(shape[:-1]), 1))
        else:
            value = np.ones(shape)
        v.assign(value.astype(np.dtype(v.dtype)))


def empirical_receptive_fields(
    model: keras.Model,
    layers: list[str] | None = None,
    *,
    size: int | tuple[int, int] | None = None,
    max_size: int = 256,
    dtype: str = "float32",
) -> tuple[dict[str, dict[str, Any] | None], tuple[int, int]]:
    """Measured receptive field per 4-D layer: {name: {"extent": [h, w], "clipped": bool}}, and the probe size.

    A layer maps to None when the probe overflowed there (non-finite gradient).

    See the module docstring for the method. `size` defaults to a probe large enough for the
    theoretical fields (at least the model's input, at most `max_size`); if the convolutional
    part cannot run at that size it is measured at the model's own input size.
    """
    names = layers if layers is not None else [
        lay.name
        for lay in model.layers
        if not isinstance(lay, keras.layers.InputLayer) and len(_output_shape(lay) or []) == 4
    ]
    if not names:
        return {}, tuple(int(d) for d in model.inputs[0].shape[1:3])
    h0, w0, channels = (int(d) for d in model.inputs[0].shape[1:])
    if size is None:
        try:
            theory = theoretical_receptive_fields(model)
        except Exception:
            theory = {}
        need = max([r + 2 * j + 1 for r, j in theory.values()] + [0])
        side = min(max(need, h0, w0), max(max_size, h0, w0))
        probe_hw = (max(side, h0), max(side, w0))
    else:
        probe_hw = (size, size) if isinstance(size, int) else tuple(size)
    sub = keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])
    for attempt in (probe_hw, (h0, w0)):
        try:
            inp = keras.Input(shape=(attempt[0], attempt[1], channels), dtype=dtype)
            probe = keras.models.clone_model(
                sub, input_tensors=inp, clone_function=lambda lay: _probe_clone(lay, dtype), recursive=True
            )
            probe_hw = attempt
            break
        except Exception:
            if attempt == (h0, w0):
                raise
    _set_positive_weights(probe)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0.5, 1.5, size=(1, probe_hw[0], probe_hw[1], channels)).astype(dtype))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outs = probe(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        targets = [tf.reduce_sum(o[0, o.shape[1] // 2, o.shape[2] // 2, :]) for o in outs]
    log.info(f"inspect: measuring the receptive fields of {len(names)} layers on a {probe_hw[0]}x{probe_hw[1]} probe")
    bar = keras.utils.Progbar(len(names), unit_name="layer", verbose=keras_verbose())
    result: dict[str, dict[str, Any] | None] = {}
    for name, target in zip(names, targets):
        g = np.asarray(tape.gradient(target, x, unconnected_gradients="zero"))[0]
        bar.add(1)
        if not np.all(np.isfinite(g)):
            result[name] = None  # the probe overflowed; no honest measurement
            continue
        support = (g != 0).any(axis=-1)
        rows, cols = np.flatnonzero(support.any(axis=1)), np.flatnonzero(support.any(axis=0))
        if rows.size == 0:
            result[name] = {"extent": [0, 0], "clipped": False}
        else:
            result[name] = {
                "extent": [int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)],
                "clipped": bool(rows[0] == 0 or cols[0] == 0 or rows[-1] == probe_hw[0] - 1 or cols[-1] == probe_hw[1] - 1),
            }
    del tape
    return result, probe_hw


def _check(theory: tuple[int, int] | None, measured: dict[str, Any] | None, probe_hw: tuple[int, int]) -> str:
    """Compare formula and measurement.

    'ok' (equal), 'MISMATCH' (they differ), 'global' (the unit depends on the whole probe although
    the formula's field would fit: global pooling inside the body, e.g. squeeze-and-excitation, which
    the formula does not model), 'clipped' (the formula's field does not fit the probe either, so the
    measurement is only a lower bound) or 'n/a' (no formula value or no measurement).
    """
    if theory is None or measured is None:
        return "n/a"
    r, jump = theory
    if not measured["clipped"]:
        return "ok" if measured["extent"] == [r, r] else "MISMATCH"
    if r + 2 * jump >= min(probe_hw):
        return "clipped"
    return "global" if measured["extent"] == list(probe_hw) else "MISMATCH"


# --------------------------------------------------------------------------- public API


def _inspect(model: keras.Model, *, empirical: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    try:
        theory = theoretical_receptive_fields(model)
        theory_note = None
    except Exception as exc:  # a graph the formula walker cannot follow
        theory, theory_note = {}, f"theoretical receptive fields unavailable: {type(exc).__name__}: {exc}"
    measured: dict[str, dict[str, Any]] = {}
    probe_hw = None
    if empirical:
        measured, probe_hw = empirical_receptive_fields(model)
    rows = []
    for layer in model.layers:
        t = theory.get(layer.name)
        m = measured.get(layer.name)
        rows.append(
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "output_shape": _output_shape(layer),
                "params": int(layer.count_params()) if layer.built else 0,
                "trainable_params": _trainable_params(layer),
                "macs": int(layer_macs(layer)),
                "rf": t[0] if t else None,
                "jump": t[1] if t else None,
                "rf_measured": m["extent"] if m else None,
                "rf_clipped": m["clipped"] if m else None,
                "rf_check": _check(t, m, probe_hw) if empirical else "n/a",
            }
        )
    meta = {"probe_size": list(probe_hw) if probe_hw else None, "note": theory_note}
    return rows, meta


def inspect_model(model: keras.Model, *, empirical: bool = True) -> list[dict[str, Any]]:
    """One dict per top-level layer: name, type, output_shape, params, trainable_params, macs,
    rf / jump (course formula), rf_measured [h, w], rf_clipped, rf_check ('ok', 'MISMATCH', 'global', 'clipped', 'n/a')."""
    return _inspect(model, empirical=empirical)[0]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of inspect_model rows (what `tfcnn inspect` prints)."""

    def shape(s: list | None) -> str:
        return "multiple" if s is None else "x".join("?" if d is None else str(d) for d in s[1:])

    def rf(row: dict[str, Any]) -> tuple[str, str]:
        theo = "" if row["rf"] is None else f"{row['rf']} (s{row['jump']})"
        meas = "" if row["rf_measured"] is None else "x".join(map(str, row["rf_measured"])) + ("+" if row["rf_clipped"] else "")
        return theo, meas

    header = ("layer", "type", "output", "params", "MACs", "RF formula", "RF measured", "check")
    body = [
        (r["name"], r["type"], shape(r["output_shape"]), f"{r['params']:,}", f"{r['macs']:,}", *rf(r),
         "" if r["rf_check"] == "n/a" else r["rf_check"])
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    right = {3, 4}
    lines = []
    for i, cells in enumerate([header, *body]):
        lines.append("  ".join(str(c).rjust(w) if j in right else str(c).ljust(w) for j, (c, w) in enumerate(zip(cells, widths))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_summary(summary: dict[str, Any]) -> str:
    """The table plus the totals line of an inspect_run summary (what `tfcnn inspect` shows)."""
    total = summary["total_macs"]
    lines = [
        format_table(summary["layers"]),
        f"total: {summary['total_params']:,} parameters ({summary['trainable_params']:,} trainable), "
        f"{total:,} MACs ({2 * total:,} FLOPs) per image; receptive fields measured on a "
        f"{'x'.join(map(str, summary['probe_size'] or []))} probe"
        + (f"; MISMATCH at {', '.join(summary['rf_mismatches'])}" if summary["rf_mismatches"] else "")
        + (
            f"; {len(summary['rf_global'])} layers see the whole input through global pooling in the body "
            "(the formula ignores it)"
            if summary["rf_global"]
            else ""
        ),
    ]
    if summary.get("note"):
        lines.append(summary["note"])
    return "\n".join(lines)


def inspect_run(run_dir: "Run | Path", *, empirical: bool = True) -> dict[str, Any]:
    """Inspect a run's model; write the run's inspect file and log the table (:func:`format_summary`)."""
    run = Run.open(run_dir, need=("model",))
    model = load_trained_model(run)
    rows, meta = _inspect(model, empirical=empirical)
    total_macs = sum(r["macs"] for r in rows)
    summary = {
        "model": model.name,
        "input_shape": list(model.inputs[0].shape[1:]),
        "layers": rows,
        "total_params": int(model.count_params()),
        "trainable_params": sum(r["trainable_params"] for r in rows),
        "total_macs": int(total_macs),
        "total_flops": int(2 * total_macs),
        "rf_mismatches": [r["name"] for r in rows if r["rf_check"] == "MISMATCH"],
        "rf_global": [r["name"] for r in rows if r["rf_check"] == "global"],
        "probe_size": meta["probe_size"],
        "conventions": CONVENTIONS,
    }
    if meta["note"]:
        summary["note"] = meta["note"]
    run.write_json("inspect", summary)
    log.info(format_summary(summary))
    return summary
