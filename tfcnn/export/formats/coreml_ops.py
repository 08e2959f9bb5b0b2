"""The ML Program ops the numpy MIL evaluator (:mod:`coreml_eval`) knows, one function each.

Kept apart from the program reader so each stays readable: this module is the op table
(:data:`OPS`, filled by ``@_op(...)``) and the numpy arithmetic behind it (convolution and
pooling with MIL's padding rules, reductions, layout ops, casts, ``classify``, and a detector's
post-processing: top-k, gather, slicing, select, NMS); the reader
walks the program, feeds each op its inputs and checks each result's declared dtype and shape.
An op missing here is refused by the reader, by name, before any image runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from tfcnn.errors import ExportError

CAST_DTYPES = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int16": np.int16, "uint16": np.uint16,
               "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}



class NoBatch(Exception):
    """An op cannot be evaluated for several images at once; the caller runs them one by one."""


@dataclass
class Var:
    """A value flowing through the program; ``batched`` marks tensors whose axis 0 holds the images."""

    value: Any
    batched: bool = False


# --------------------------------------------------------------------------- helpers for ops


def _spatial_pads(pad_type: str, pad: np.ndarray | None, sizes: tuple[int, ...], kernel: tuple[int, ...],
                  strides: tuple[int, ...], dilations: tuple[int, ...], op: str) -> list[tuple[int, int]]:
    """(before, after) per spatial axis for MIL's valid / same / same_lower / custom padding."""
    if pad_type == "valid":
        return [(0, 0)] * len(sizes)
    if pad_type == "custom":
        p = [int(v) for v in (pad if pad is not None else [0] * (2 * len(sizes)))]
        return [(p[2 * i], p[2 * i + 1]) for i in range(len(sizes))]
    if pad_type in ("same", "same_lower"):
        out = []
        for n, k, s, d in zip(sizes, kernel, strides, dilations):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            small, big = total // 2, total - total // 2
            out.append((small, big) if pad_type == "same" else (big, small))
        return out
    raise ExportError(f"op {op}: pad_type {pad_type!r} is not valid, same, same_lower or custom")


def _taps(x: np.ndarray, kernel: tuple[int, int], strides: tuple[int, int], dilations: tuple[int, int]):
    """Yield ((i, j), x[..., window tap (i, j) of every output position]) for a padded [..., H, W] array.

    Looping over the kh*kw taps with strided slices keeps each step one vectorised numpy call
    on the whole batch (no 6-D window tensor to copy), which is what makes the evaluator fast.
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    h, w = x.shape[-2:]
    ho, wo = (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"padded input {list(x.shape)} is smaller than the {(kh - 1) * dh + 1}x{(kw - 1) * dw + 1} window")
    for i in range(kh):
        for j in range(kw):
            yield (i, j), x[..., i * dh: i * dh + (ho - 1) * sh + 1: sh, j * dw: j * dw + (wo - 1) * sw + 1: sw]


def _conv(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, strides: tuple[int, int], pads: list[tuple[int, int]],
          dilations: tuple[int, int], groups: int) -> np.ndarray:
    """2-D convolution (cross-correlation, as in MIL) as a sum over kernel taps of channel matmuls."""
    n, cin = x.shape[:2]
    cout, cin_g, kh, kw = w.shape
    if cin != cin_g * groups or cout % groups:
        raise ValueError(f"input channels {cin} and weight {list(w.shape)} do not fit groups={groups}")
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    depthwise = cin_g == 1 and cout == groups
    if depthwise:  # one filter per channel: multiply-accumulate in NCHW
        y = None
        for (i, j), tap in _taps(xp, (kh, kw), strides, dilations):
            term = tap * w[:, 0, i, j].reshape(1, -1, 1, 1)
            y = term if y is None else y + term
    else:  # im2col in channels-last memory (contiguous Cin runs), then one GEMM per group
        nhwc = np.moveaxis(np.ascontiguousarray(xp.transpose(0, 2, 3, 1)), 3, 1)  # [N, C, H, W] view of NHWC memory
        taps = [np.moveaxis(tap, 1, 3) for _, tap in _taps(nhwc, (kh, kw), strides, dilations)]  # [N, Ho, Wo, Cin] each
        ho, wo = taps[0].shape[1:3]
        og = cout // groups
        outs = []
        for g in range(groups):
            cols = np.concatenate([t[..., g * cin_g:(g + 1) * cin_g] for t in taps], axis=-1).reshape(n * ho * wo, -1)
            wg = w[g * og:(g + 1) * og].transpose(2, 3, 1, 0).reshape(kh * kw * cin_g, og)  # (i, j, c) order, as cols
            outs.append(cols @ wg)
        y = (outs[0] if groups == 1 else np.concatenate(outs, axis=1)).reshape(n, ho, wo, cout).transpose(0, 3, 1, 2)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y


def _pool(x: np.ndarray, kind: str, kernel: tuple[int, int], strides: tuple[int, int], pads: list[tuple[int, int]],
          ceil_mode: bool, exclude_padding: bool) -> np.ndarray:
    """Max / average pooling; ceil_mode adds windows that run past the (padded) input's end."""
    h, w = x.shape[2:]
    extra = []
    for n, k, s, (a, b) in zip((h, w), kernel, strides, pads):
        span = n + a + b
        out = (math.ceil if ceil_mode else math.floor)((span - k) / s) + 1
        if ceil_mode and (out - 1) * s >= n + a:  # the last window must start inside input or leading pad
            out -= 1
        extra.append(max((out - 1) * s + k - span, 0))
    fill = -np.inf if kind == "max" else 0.0
    full = [(0, 0), (0, 0), (pads[0][0], pads[0][1] + extra[0]), (pads[1][0], pads[1][1] + extra[1])]
    xp = np.pad(x, full, constant_values=fill)
    acc = None
    for _, tap in _taps(xp, kernel, strides, (1, 1)):
        acc = tap.copy() if acc is None else (np.maximum(acc, tap) if kind == "max" else acc + tap)
    if kind == "max":
        return acc
    ones = np.zeros((1, 1) + xp.shape[2:], x.dtype)
    if exclude_padding:  # count only real input elements
        ones[:, :, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + w] = 1
    else:  # count input and explicit padding, never the ceil-mode overhang
        ones[:, :, : xp.shape[2] - extra[0], : xp.shape[3] - extra[1]] = 1
    count = sum(tap for _, tap in _taps(ones, kernel, strides, (1, 1)))
    return acc / np.maximum(count, 1)


def _axes(axes: Any, rank: int) -> tuple[int, ...]:
    return tuple(int(a) % rank for a in np.atleast_1d(axes))


def _no_batch_axis(v: Var, axes: tuple[int, ...], op: str) -> None:
    if v.batched and 0 in axes:
        raise NoBatch(op)


# --------------------------------------------------------------------------- the ops


OpFn = Callable[["Ctx", dict[str, Var]], list[Var]]
OPS: dict[str, OpFn] = {}


def _op(*names: str) -> Callable[[OpFn], OpFn]:
    def deco(fn: OpFn) -> OpFn:
        for n in names:
            OPS[n] = fn
        return fn

    return deco


class Ctx:
    """What an op needs besides its inputs: its type and name, so an error names the op."""

    def __init__(self, op_type: str, name: str):
        self.op = op_type
        self.name = name

    def where(self) -> str:
        return f"op {self.op} ({self.name!r})"


def _arr(v: Var | None) -> Any:
    return None if v is None else v.value


def _f32(v: Var) -> np.ndarray:
    """Compute dtype: float16/float32 tensors become float32 (float16 results are rounded after)."""
    a = np.asarray(v.value)
    return a.astype(np.float32) if a.dtype == np.float16 else a


def _b(*vs: Var | None) -> bool:
    return any(v is not None and v.batched for v in vs)


_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide,
    "maximum": np.maximum, "minimum": np.minimum, "pow": np.power,
    "floor_div": np.floor_divide, "mod": np.mod,
    # comparisons (the reconstruction task's anomaly flag: score > threshold)
    "greater": np.greater, "greater_equal": np.greater_equal, "less": np.less, "less_equal": np.less_equal,
}
_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "square": np.square,
    "abs": np.abs,
    "identity": lambda x: x,
}


@_op(*_BINARY)
def _binary(c: Ctx, a: dict[str, Var]) -> list[Var]:
    x, y = a["x"], a["y"]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return [Var(_BINARY[c.op](_f32(x), _f32(y)), _b(x, y))]


@_op(*_UNARY)
def _unary(c: Ctx, a: dict[str, Var]) -> list[Var]:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return [Var(_UNARY[c.op](_f32(a["x"])), a["x"].batched)]


@_op("inverse", "rsqrt")
def _with_epsilon(c: Ctx, a: dict[str, Var]) -> list[Var]:
    """MIL's ``inverse`` = 1 / (x + epsilon) (default 1e-4) and ``rsqrt`` = 1 / sqrt(x + epsilon)
    (default 1e-12): the epsilon is part of the op, and the converter writes ``1 / x`` as inverse."""
    x = _f32(a["x"])
    eps = np.float32(_arr(a["epsilon"])) if "epsilon" in a else np.float32(1e-4 if c.op == "inverse" else 1e-12)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        y = 1.0 / (x + eps) if c.op == "inverse" else 1.0 / np.sqrt(x + eps)
    return [Var(y.astype(np.float32), a["x"].batched)]


@_op("leaky_relu")
def _leaky(c: Ctx, a: dict[str, Var]) -> list[Var]:
    x = _f32(a["x"])
    alpha = float(_arr(a.get("alpha")) if "alpha" in a else 0.01)
    return [Var(np.where(x >= 0, x, alpha * x), a["x"].batched)]


@_op("clip")
def _clip(c: Ctx, a: dict[str, Var]) -> list[Var]:
    return [Var(np.clip(_f32(a["x"]), float(_arr(a["alpha"])), float(_arr(a["beta"]))), a["x"].batched)]


@_op("softmax")
def _softmax(c: Ctx, a: dict[str, Var]) -> list[Var]:
    x = _f32(a["x"])
    axis = int(_arr(a["axis"])) if "axis" in a else -1
    _no_batch_axis(a["x"], _axes(axis, x.ndim), c.op)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return [Var(e / e.sum(axis=axis, keepdims=True), a["x"].batched)]


@_op("conv")
def _conv_op(c: Ctx, a: dict[str, Var]) -> list[Var]:
    x, w = _f32(a["x"]), _f32(a["weight"])
    if x.ndim != 4 or w.ndim != 4:
        raise ExportError(f"{c.where()}: only 2-D convolution is evaluated (x {list(x.shape)}, weight {list(w.shape)})")
    if a["weight"].batched:
        raise ExportError(f"{c.where()}: weights computed from the input are not supported")
    strides = tuple(int(s) for s in _arr(a["strides"])) if "strides" in a else (1, 1)
    dil = tuple(int(s) for s in _arr(a["dilations"])) if "dilations" in a else (1, 1)
    groups = int(_arr(a["groups"])) if "groups" in a else 1
    pad_type = str(_arr(a["pad_type"])) if "pad_type" in a else "valid"
    pads = _spatial_pads(pad_type, _arr(a.get("pad")), x.shape[2:], w.shape[2:], strides, dil, c.where())
    bias = _f32(a["bias"]) if "bias" in a else None
    return [Var(_conv(x, w, bias, strides, pads, dil, groups), a["x"].batched)]


def _conv_transpose(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, strides: tuple[int, int],
                    dilations: tuple[int, int], crops: list[tuple[int, int]]) -> np.ndarray:
    """2-D transposed convolution (MIL weight layout ``[C_in, C_out, kH, kW]``): every input pixel
    scatters ``x * w`` over a kernel-sized window at stride steps; the full output
    ``(D - 1) * s + (K - 1) * d + 1`` per side is then cropped by ``crops`` (before, after)."""
    n, cin, h, wd = x.shape
    _, cout, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilations
    full_h, full_w = (h - 1) * sh + (kh - 1) * dh + 1, (wd - 1) * sw + (kw - 1) * dw + 1
    y = np.zeros((n, cout, full_h, full_w), np.float32)
    xt = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(-1, cin)  # [N*H*W, C_in]
    for i in range(kh):
        for j in range(kw):
            contrib = (xt @ w[:, :, i, j]).reshape(n, h, wd, cout).transpose(0, 3, 1, 2)
            y[:, :, i * dh : i * dh + (h - 1) * sh + 1 : sh, j * dw : j * dw + (wd - 1) * sw + 1 : sw] += contrib
    (t, b), (left, r) = crops
    y = y[:, :, t : full_h - b, left : full_w - r]
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y


@_op("conv_transpose")
def _conv_transpose_op(c: Ctx, a: dict[str, Var]) -> list[Var]:
    """MIL conv_transpose (iOS15): output size from ``output_shape`` when given, else from the
    pad type ("valid": the full size; "same": input x stride, the surplus cropped like TF's
    SAME, the smaller half first; "custom": the ``pad`` amounts cropped)."""
    x, w = _f32(a["x"]), _f32(a["weight"])
    if x.ndim != 4 or w.ndim != 4:
        raise ExportError(f"{c.where()}: only 2-D transposed convolution is evaluated (x {list(x.shape)}, weight {list(w.shape)})")
    if a["weight"].batched:
        raise ExportError(f"{c.where()}: weights computed from the input are not supported")
    groups = int(_arr(a["groups"])) if "groups" in a else 1
    if groups != 1:
        raise ExportError(f"{c.where()}: grouped transposed convolution (groups={groups}) is not evaluated")
    strides = tuple(int(v) for v in _arr(a["strides"])) if "strides" in a else (1, 1)
    dil = tuple(int(v) for v in _arr(a["dilations"])) if "dilations" in a else (1, 1)
    pad_type = str(_arr(a["pad_type"])) if "pad_type" in a else "valid"
    kh, kw = w.shape[2:]
    full = [(d - 1) * s + (k - 1) * dl + 1 for d, s, k, dl in zip(x.shape[2:], strides, (kh, kw), dil)]
    out_shape = _arr(a.get("output_shape"))
    if pad_type == "custom":
        pad = [int(v) for v in np.asarray(_arr(a["pad"])).ravel()]
        crops = [(pad[0], pad[1]), (pad[2], pad[3])]
    else:
        if out_shape is not None:
            want = [int(v) for v in np.asarray(out_shape).ravel()[-2:]]
        elif pad_type == "same":
            want = [d * s for d, s in zip(x.shape[2:], strides)]
        else:
            want = full
        crops = []
        for f, o in zip(full, want):
            if o > f:
                raise ExportError(f"{c.where()}: output size {o} exceeds the full transposed size {f}")
            crops.append(((f - o) // 2, f - o - (f - o) // 2))
    bias = _f32(a["bias"]) if "bias" in a else None
    return [Var(_conv_transpose(x, w, bias, strides, dil, crops), a["x"].batched)]


@_op("reduce_argmax", "reduce_argmin")
def _reduce_arg(c: Ctx, a: dict[str, Var]) -> list[Var]:
    """Index of the largest (smallest) value along ``axis`` (default -1), int32; ties go to the
    first index, like TF's ArgMax."""
    x = _f32(a["x"])
    axis = int(_arr(a["axis"])) % x.ndim if "axis" in a else x.ndim - 1
    _no_batch_axis(a["x"], (axis,), c.op)
    keep = bool(_arr(a["keep_dims"])) if "keep_dims" in a else False
    fn = np.argmax if c.op == "reduce_argmax" else np.argmin
    out = fn(x, axis=axis)
    if keep:
        out = np.expand_dims(out, axis)
    return [Var(out.astype(np.int32), a["x"].batched)]


def _pool_op(kind: str) -> OpFn:
    def run(c: Ctx, a: dict[str, Var]) -> list[Var]:
        x = _f32(a["x"])
        if x.ndim != 4:
            raise ExportError(f"{c.where()}: only 2-D pooling is evaluated (x {list(x.shape)})")
        kernel = tuple(int(k) for k in _arr(a["kernel_sizes"]))
        strides = tuple(int(s) for s in _arr(a["strides"])) if "strides" in a else (1, 1)
        pad_type = str(_arr(a["pad_type"]))
        pads = _spatial_pads(pad_type, _arr(a.get("pad")), x.shape[2:], kernel, strides, (1, 1), c.where())
        ceil_mode = bool(_arr(a["ceil_mode"])) if "ceil_mode" in a else False
        exclude = bool(_arr(a["exclude_padding_from_average"])) if "exclude_padding_from_average" in a else False
        return [Var(_pool(x, kind, kernel, strides, pads, ceil_mode, exclude), a["x"].batched)]

    return run


OPS["max_pool"] = _pool_op("max")
OPS["avg_pool"] = _pool_op("avg")


@_op("batch_norm")
def _batch_norm(c: Ctx, a: dict[str, Var]) -> list[Var]:
    x = _f32(a["x"])
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = _f32(a["mean"]).reshape(shape), _f32(a["variance"]).reshape(shape)
    gamma = _f32(a["gamma"]).reshape(shape) if "gamma" in a else 1.0
    beta = _f32(a["beta"]).reshape(shape) if "beta" in a else 0.0
    eps = float(_arr(a["epsilon"])) if "epsilon" in a else 1e-5
    return [Var((x - mean) / np.sqrt(var + eps) * gamma + beta, a["x"].batched)]


def _reduce(fn: Callable[..., np.ndarray]) -> OpFn:
    def run(c: Ctx, a: dict[str, Var]) -> list[Var]:
        x = _f32(a["x"])
        axes = _axes(_arr(a["axes"]), x.ndim) if "axes" in a and _arr(a["axes"]) is not None else tuple(range(x.ndim))
        _no_batch_axis(a["x"], axes, c.op)
        keep = bool(_arr(a["keep_dims"])) if "keep_dims" in a else False
        return [Var(fn(x, axis=axes, keepdims=keep), a["x"].batched)]

    return run


OPS["reduce_mean"] = _reduce(np.mean)
OPS["reduce_sum"] = _reduce(np.sum)
OPS["reduce_max"] = _reduce(np.max)
OPS["reduce_min"] = _reduce(np.min)


@_op("matmul")
def _matmul(c: Ctx, a: dict[str, Var]) -> list[Var]:
    x, y = _f32(a["x"]), _f32(a["y"])
    if bool(_arr(a["transpose_x"])) if "transpose_x" in a else False:
        x = np.swapaxes(x, -1, -2)
    if bool(_arr(a["transpose_y"])) if "transpose_y" in a else False:
        y = np.swapaxes(y, -1, -2)
    if a["y"].batched and y.ndim < 3 or a["x"].batched and x.ndim < 2:
        raise NoBatch(c.op)
    return [Var(x @ y, _b(a["x"], a["y"]))]


@_op("linear")
def _linear(c: Ctx, a: dict[str, Var]) -> list[Var]:
    x, w = _f32(a["x"]), _f32(a["weight"])
    if a["weight"].batched or ("bias" in a and a["bias"].batched):
        raise ExportError(f"{c.where()}: weights computed from the input are not supported")
    y = x @ w.T
    if "bias" in a:
        y = y + _f32(a["bias"])
    if a["x"].batched and x.ndim < 2:
        raise NoBatch(c.op)
    return [Var(y, a["x"].batched)]


@_op("reshape")
def _reshape(c: Ctx, a: dict[str, Var]) -> list[Var]:
    x = np.asarray(a["x"].value)
    shape = [int(s) for s in np.atleast_1d(_arr(a["shape"]))]
    if 0 in shape:
        if len(shape) != x.ndim:
            raise ExportError(f"{c.where()}: shape {shape} has 0 but its rank differs from x {list(x.shape)}")
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    if a["x"].batched and x.shape[0] != 1:
        if not shape or shape[0] != 1:
            raise NoBatch(c.op)  # the batch axis would merge with others
        shape = [x.shape[0]] + shape[1:]
    try:
        return [Var(x.reshape(shape), a["x"].batched)]
    except ValueError:
        raise ExportError(f"{c.where()}: cannot reshape {list(x.shape)} to {shape}") from None


@_op("transpose")
def _transpose(c: Ctx, a: dict[str, Var]) -> list[Var]:
    x = np.asarray(a["x"].value)
    perm = [int(p) % x.ndim for p in _arr(a["perm"])]
    if a["x"].batched and perm[0] != 0:
        raise NoBatch(c.op)
    return [Var(np.transpose(x, perm), a["x"].batched)]


@_op("squeeze")
def _squeeze(c: Ctx, a: dict[str, Var]) -> list[Var]:
    x = np.asarray(a["x"].value)
    if "axes" in a and _arr(a["axes"]) is not None:
        axes = _axes(_arr(a["axes"]), x.ndim)
    else:
        axes = tuple(i for i, d in enumerate(x.shape) if d == 1)
        if a["x"].batched:
            axes = tuple(i for i in axes if i != 0) if x.shape[0] != 1 else axes
    _no_batch_axis(a["x"], axes, c.op)
    return [Var(np.squeeze(x, axis=axes), a["x"].batched)]


@_op("expand_dims")
def _expand_dims(c: Ctx, a: dict[str, Var]) -> list[Var]:
    x = np.asarray(a["x"].value)
    out_rank = x.ndim + len(np.atleast_1d(_arr(a["axes"])))
    axes = _axes(_arr(a["axes"]), out_rank)
    _no_batch_axis(a["x"], axes, c.op)
    return [Var(np.expand_dims(x, axes), a["x"].batched)]


@_op("tile")
def _tile(c: Ctx, a: dict[str, Var]) -> list[Var]:
    """np.tile with MIL's reps (one per axis); Keras' nearest UpSampling2D is expand_dims + tile + reshape."""
    reps = [int(r) for r in np.atleast_1d(_arr(a["reps"]))]
    if a["x"].batched and reps and reps[0] != 1:
        raise ValueError("tile along the batch axis is not supported")
    return [Var(np.tile(np.asarray(a["x"].value), reps), a["x"].batched)]


@_op("reverse")
def _reverse(c: Ctx, a: dict[str, Var]) -> list[Var]:
    """Reverse along ``axes`` (MIL's default: every axis); the segmenter's test-time flip."""
    x = _keep_dtype(a["x"])
    axes = _axes(_opt(a, "axes", list(range(x.ndim))), x.ndim)
    _no_batch_axis(a["x"], axes, c.op)
    return [Var(np.flip(x, axes) if axes else x, a["x"].batched)]


def _bilinear_grid(n_in: int, n_out: int, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """Source coordinates of MIL upsample_bilinear's output samples along one axis: the grid of
    coremltools' op docs (align_corners: ends on ends; half_pixel_centers: TF's
    ``ResizeBilinear(half_pixel_centers=True)``; neither: TF's legacy ``i * n_in / n_out``)."""
    i = np.arange(n_out, dtype=np.float64)
    if align_corners:
        g = i * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    elif half_pixel:
        g = (i + 0.5) * (n_in / n_out) - 0.5
    else:
        g = i * (n_in / n_out)
    return np.clip(g, 0, n_in - 1)


def _lerp_axis(x: np.ndarray, grid: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of `x` at fractional positions `grid` along `axis`."""
    lo = np.floor(grid).astype(np.int64)
    hi = np.minimum(lo + 1, x.shape[axis] - 1)
    shape = [1] * x.ndim
    shape[axis] = len(grid)
    frac = (grid - lo).astype(np.float32).reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


@_op("upsample_bilinear")
def _upsample_bilinear(c: Ctx, a: dict[str, Var]) -> list[Var]:
    """Bilinear upsampling of the last two axes by (possibly fractional) scale factors; output
    size floor(H * scale). Keras' bilinear UpSampling2D arrives as ``align_corners = False``
    (half-pixel centres, iOS16's default for ``half_pixel_centers``)."""
    x = _f32(a["x"])
    if x.ndim < 3:
        raise ExportError(f"{c.where()}: x must have rank >= 3, got {list(x.shape)}")
    align = bool(_opt(a, "align_corners", True))
    half = bool(_opt(a, "half_pixel_centers", not align))
    if align and half:
        raise ExportError(f"{c.where()}: align_corners and half_pixel_centers cannot both be true")
    h, w = x.shape[-2:]
    sh, sw = float(_opt(a, "scale_factor_height", 1)), float(_opt(a, "scale_factor_width", 1))
    out_h, out_w = int(np.floor(h * sh)), int(np.floor(w * sw))
    y = _lerp_axis(x, _bilinear_grid(h, out_h, align, half), x.ndim - 2)
    y = _lerp_axis(y, _bilinear_grid(w, out_w, align, half), x.ndim - 1)
    return [Var(y.astype(np.float32), a["x"].batched)]


@_op("concat")
def _concat(c: Ctx, a: dict[str, Var]) -> list[Var]:
    vs: list[Var] = a["values"].value  # variadic: a list of Vars
    arrs = [_f32(v) if np.asarray(v.value).dtype == np.float16 else np.asarray(v.value) for v in vs]
    axis = int(_arr(a["axis"])) % arrs[0].ndim
    batched = any(v.batched for v in vs)
    if batched and (axis == 0 or not all(v.batched for v in vs)):
        raise NoBatch(c.op)
    if "interleave" in a and bool(_arr(a["interleave"])):
        raise ExportError(f"{c.where()}: concat with interleave=True is not evaluated")
    return [Var(np.concatenate(arrs, axis=axis), batched)]


@_op("pad")
def _pad(c: Ctx, a: dict[str, Var]) -> list[Var]:
    x = _f32(a["x"])
    p = [int(v) for v in np.atleast_1d(_arr(a["pad"]))]
    k = len(p) // 2
    widths = [(0, 0)] * (x.ndim - k) + [(p[2 * i], p[2 * i + 1]) for i in range(k)]
    if a["x"].batched and widths[0] != (0, 0):
        raise NoBatch(c.op)
    mode = str(_arr(a["mode"])) if "mode" in a else "constant"
    if mode == "constant":
        val = float(_arr(a["constant_val"])) if "constant_val" in a else 0.0
        return [Var(np.pad(x, widths, constant_values=val), a["x"].batched)]
    if mode in ("reflect", "replicate"):
        return [Var(np.pad(x, widths, mode="reflect" if mode == "reflect" else "edge"), a["x"].batched)]
    raise ExportError(f"{c.where()}: pad mode {mode!r} is not constant, reflect or replicate")


@_op("cast")
def _cast(c: Ctx, a: dict[str, Var]) -> list[Var]:
    name = str(_arr(a["dtype"]))
    if name not in CAST_DTYPES:
        raise ExportError(f"{c.where()}: cast to {name!r} is not evaluated; known: {', '.join(CAST_DTYPES)}")
    x = np.asarray(a["x"].value)
    dt = CAST_DTYPES[name]
    if np.issubdtype(dt, np.integer) and np.issubdtype(x.dtype, np.floating):
        x = np.trunc(x)  # MIL casts float -> int by truncation toward zero
    return [Var(x.astype(dt), a["x"].batched)]


@_op("classify")
def _classify(c: Ctx, a: dict[str, Var]) -> list[Var]:
    probs = np.asarray(a["probabilities"].value, np.float32)
    classes = list(a["classes"].value)
    rows = probs.reshape(-1, probs.shape[-1]) if a["probabilities"].batched else probs.reshape(1, -1)
    if rows.shape[-1] != len(classes):
        raise ExportError(f"{c.where()}: {rows.shape[-1]} probabilities for {len(classes)} classes")
    labels = [classes[int(i)] for i in rows.argmax(axis=1)]
    dicts = [dict(zip(classes, (float(v) for v in row))) for row in rows]
    return [Var(labels, True), Var(dicts, True)]


# --------------------------------------------------------------------------- detection post-processing
# A detector's exported graph carries its post-processing (top-k, decode, per-class NMS); these
# are the ops coremltools' TF frontend writes for it (tfcnn/tasks/postprocess.py), evaluated per
# coremltools' iOS15 op definitions (and the iOS16/17 inputs where a later opset adds some).


def _opt(a: dict[str, Var], key: str, default: Any) -> Any:
    """An optional op input's value, or the MIL default when the program leaves it out."""
    v = a.get(key)
    return default if v is None or v.value is None else v.value


def _mask(a: dict[str, Var], key: str, rank: int) -> list[bool]:
    return [bool(m) for m in np.atleast_1d(_opt(a, key, [False] * rank))]


def _keep_dtype(v: Var) -> np.ndarray:
    """Values that are only moved, not computed (gather, slice, select...): their own dtype."""
    return np.asarray(v.value)


@_op("logical_and", "logical_or", "logical_xor")
def _logical(c: Ctx, a: dict[str, Var]) -> list[Var]:
    fn = {"logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor}[c.op]
    return [Var(fn(np.asarray(a["x"].value, np.bool_), np.asarray(a["y"].value, np.bool_)), _b(a["x"], a["y"]))]


@_op("logical_not")
def _logical_not(c: Ctx, a: dict[str, Var]) -> list[Var]:
    return [Var(np.logical_not(np.asarray(a["x"].value, np.bool_)), a["x"].batched)]


@_op("equal", "not_equal")
def _equal(c: Ctx, a: dict[str, Var]) -> list[Var]:
    fn = np.equal if c.op == "equal" else np.not_equal
    return [Var(fn(_f32(a["x"]), _f32(a["y"])), _b(a["x"], a["y"]))]


@_op("select")
def _select(c: Ctx, a: dict[str, Var]) -> list[Var]:
    """``where(cond, a, b)`` with numpy broadcasting; shapes that do not broadcast are an error
    (as they are for CoreML), never silently repaired."""
    cond, x, y = a["cond"], a["a"], a["b"]
    cv, xv, yv = np.asarray(cond.value, np.bool_), _keep_dtype(x), _keep_dtype(y)
    try:
        shape = np.broadcast_shapes(cv.shape, xv.shape, yv.shape)
    except ValueError:
        raise ExportError(
            f"{c.where()}: cond {list(cv.shape)}, a {list(xv.shape)} and b {list(yv.shape)} do not broadcast"
        ) from None
    batched = _b(cond, x, y)
    if batched and any(not v.batched and np.ndim(v.value) == len(shape) and np.shape(v.value)[0] != 1 for v in (cond, x, y)):
        raise NoBatch(c.op)  # an operand of the program's own axis 0 would meet the images' axis
    if xv.dtype == np.float16 or yv.dtype == np.float16:
        xv, yv = _f32(x), _f32(y)
    return [Var(np.where(cv, xv, yv), batched)]


@_op("range_1d")
def _range_1d(c: Ctx, a: dict[str, Var]) -> list[Var]:
    """np.arange(start, end, step): empty when end is not past start in the step's direction."""
    start, end, step = (np.asarray(a[k].value).reshape(()) for k in ("start", "end", "step"))
    if _b(a["start"], a["end"], a["step"]):
        raise NoBatch(c.op)
    if step == 0:
        raise ExportError(f"{c.where()}: step is 0")
    dt = np.result_type(start, end, step)
    return [Var(np.arange(start, end, step, dtype=np.float32 if dt == np.float16 else dt))]


@_op("stack")
def _stack(c: Ctx, a: dict[str, Var]) -> list[Var]:
    vs: list[Var] = a["values"].value
    arrs = [_f32(v) if np.asarray(v.value).dtype == np.float16 else np.asarray(v.value) for v in vs]
    if len({x.shape for x in arrs}) != 1:
        raise ExportError(f"{c.where()}: values of shapes {[list(x.shape) for x in arrs]} differ")
    axis = int(_arr(a["axis"]))
    axis = axis + arrs[0].ndim + 1 if axis < 0 else axis
    batched = any(v.batched for v in vs)
    if batched and (axis == 0 or not all(v.batched for v in vs)):
        raise NoBatch(c.op)
    return [Var(np.stack(arrs, axis=axis), batched)]


@_op("split")
def _split(c: Ctx, a: dict[str, Var]) -> list[Var]:
    """``split_sizes`` (uneven, must sum to the axis) or ``num_splits`` equal parts."""
    x = _keep_dtype(a["x"])
    axis = int(_arr(a["axis"])) % x.ndim
    _no_batch_axis(a["x"], (axis,), c.op)
    sizes = a.get("split_sizes")
    if sizes is not None and sizes.value is not None:
        parts = [int(s) for s in np.atleast_1d(sizes.value)]
        if sum(parts) != x.shape[axis] or min(parts) < 0:
            raise ExportError(f"{c.where()}: split_sizes {parts} do not add up to axis {axis} of {list(x.shape)}")
    else:
        n = int(_arr(a["num_splits"]))
        if n < 1 or x.shape[axis] % n:
            raise ExportError(f"{c.where()}: num_splits {n} does not divide axis {axis} of {list(x.shape)}")
        parts = [x.shape[axis] // n] * n
    cuts = np.cumsum(parts)[:-1]
    return [Var(p, a["x"].batched) for p in np.split(x, cuts, axis=axis)]


@_op("slice_by_index")
def _slice_by_index(c: Ctx, a: dict[str, Var]) -> list[Var]:
    """``x[begin:end:stride, ...]`` per axis, as Python slicing (negative begin/end count from
    the end, out-of-range ends are clipped); a masked begin/end is left open (so with a
    negative stride it starts at the axis' end); a squeezed axis takes the single element at
    ``begin`` and is dropped."""
    x = _keep_dtype(a["x"])
    r = x.ndim
    begin = [int(b) for b in np.atleast_1d(a["begin"].value)]
    end = [int(e) for e in np.atleast_1d(a["end"].value)]
    stride = [int(s) for s in np.atleast_1d(_opt(a, "stride", [1] * r))]
    bmask, emask, smask = (_mask(a, k, r) for k in ("begin_mask", "end_mask", "squeeze_mask"))
    if not all(len(v) == r for v in (begin, end, stride, bmask, emask, smask)):
        raise ExportError(f"{c.where()}: begin/end/stride/masks must have one entry per axis of {list(x.shape)}")
    if 0 in stride:
        raise ExportError(f"{c.where()}: stride {stride} has a 0")
    index: list[Any] = []
    for i in range(r):
        if smask[i]:
            b = begin[i] + x.shape[i] if begin[i] < 0 else begin[i]
            if not 0 <= b < x.shape[i]:
                raise ExportError(f"{c.where()}: squeezed index {begin[i]} is outside axis {i} of {list(x.shape)}")
            index.append(b)
        else:
            index.append(slice(None if bmask[i] else begin[i], None if emask[i] else end[i], stride[i]))
    if a["x"].batched and not (isinstance(index[0], slice) and index[0].indices(x.shape[0]) == (0, x.shape[0], 1)):
        raise NoBatch(c.op)  # the slice would pick among the images, not within each
    return [Var(np.asarray(x[tuple(index)]), a["x"].batched)]


@_op("gather")
def _gather(c: Ctx, a: dict[str, Var]) -> list[Var]:
    """``x`` indexed along ``axis`` by ``indices`` (any rank), as tf.gather; ``batch_dims``
    (iOS16) leading axes of ``x`` and ``indices`` are paired. Negative indices count from the
    end; an index outside ``[-D, D)`` is an error here (the MIL spec leaves it undefined, or
    raises with iOS17's ``validate_indices``), never clamped or wrapped."""
    x, idx = _keep_dtype(a["x"]), np.asarray(a["indices"].value)
    if not np.issubdtype(idx.dtype, np.integer):
        raise ExportError(f"{c.where()}: indices are {idx.dtype}, not integers")
    axis = int(_opt(a, "axis", 0))
    axis = axis + x.ndim if axis < 0 else axis
    bd = int(_opt(a, "batch_dims", 0))
    if not 0 <= axis < x.ndim or not 0 <= bd <= min(axis, idx.ndim):
        raise ExportError(f"{c.where()}: axis {axis} / batch_dims {bd} do not fit x {list(x.shape)}, indices {list(idx.shape)}")
    n = x.shape[axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        bad = idx[(idx < -n) | (idx >= n)].reshape(-1)[:3].tolist()
        raise ExportError(f"{c.where()}: indices {bad} are outside [-{n}, {n}) for axis {axis} of {list(x.shape)}")
    idx = np.where(idx < 0, idx + n, idx)
    xb, ib = a["x"].batched, a["indices"].batched
    if xb and (axis == 0 or bd == 0 and ib or bd > 0 and not ib) or ib and not xb and axis != 0:
        raise NoBatch(c.op)  # the gather would mix the images' axis with another one
    if bd == 0:
        out = np.take(x, idx, axis=axis)
    else:
        if x.shape[:bd] != idx.shape[:bd]:
            raise ExportError(f"{c.where()}: batch_dims {bd}: x {list(x.shape)} and indices {list(idx.shape)} differ there")
        lead = x.shape[:bd]
        xs = x.reshape((-1,) + x.shape[bd:])
        ids = idx.reshape((-1,) + idx.shape[bd:])
        out = np.stack([np.take(xi, ii, axis=axis - bd) for xi, ii in zip(xs, ids)])
        out = out.reshape(lead + out.shape[1:])
    return [Var(out, _b(a["x"], a["indices"]))]


@_op("topk")
def _topk(c: Ctx, a: dict[str, Var]) -> list[Var]:
    """The k largest (or, ``ascending``, smallest) values along ``axis`` and their indices.

    Ties are broken deterministically by the lower index first (a stable sort), which is what
    tf.math.top_k does; CoreML does not document its tie order, so on the device tied values
    may come out in another order (same values, swapped indices). ``sort=False`` (iOS16) allows
    any order; the evaluator still returns them sorted. With ``return_indices=False`` (iOS16)
    only the values are returned."""
    x = _f32(a["x"])
    axis = int(_opt(a, "axis", -1)) % x.ndim
    k = int(np.asarray(_opt(a, "k", 1)).reshape(()))
    _no_batch_axis(a["x"], (axis,), c.op)
    if not 0 <= k <= x.shape[axis]:
        raise ExportError(f"{c.where()}: k = {k} is outside [0, {x.shape[axis]}] for axis {axis} of {list(x.shape)}")
    key = x if bool(_opt(a, "ascending", False)) else -x.astype(np.float64) if x.dtype.kind == "i" else -x
    order = np.argsort(key, axis=axis, kind="stable")
    order = np.take(order, np.arange(k), axis=axis)
    values = np.take_along_axis(x, order, axis=axis)
    out = [Var(values, a["x"].batched)]
    if bool(_opt(a, "return_indices", True)):
        out.append(Var(order.astype(np.int32), a["x"].batched))
    return out


def _nms_one(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, score_threshold: float, max_boxes: int,
             per_class: bool) -> tuple[list[int], bool]:
    """Greedy NMS of one batch element: the selected box indices in selection order, and whether
    the "no box survives" fallback applied.

    ``boxes [N, 4]`` are (x_center, y_center, width, height); a box's score is the max over its
    K class scores (its class that argmax, for ``per_class``). Candidates are taken by descending
    score, ties by lower index (TF's order); one is dropped when its IoU with an already selected
    box (of the same class, for ``per_class``) is above ``iou_threshold``; boxes scoring below
    ``score_threshold`` never enter. IoU of boxes with no area is 0 (as in TF)."""
    best = scores.max(axis=1)
    cls = scores.argmax(axis=1)
    cx, cy, w, h = (boxes[:, i] for i in range(4))
    x1, x2 = cx - w / 2, cx + w / 2
    y1, y2 = cy - h / 2, cy + h / 2
    lo_x, hi_x, lo_y, hi_y = np.minimum(x1, x2), np.maximum(x1, x2), np.minimum(y1, y2), np.maximum(y1, y2)
    area = (hi_x - lo_x) * (hi_y - lo_y)
    order = np.argsort(-best, kind="stable")
    alive = best >= score_threshold  # "boxes with class scores below this threshold are rejected"
    if not alive.any():
        # CoreML's NMS never returns an empty result: it reports 1 box, the highest scoring one.
        # That is the contract of NeuralNetwork.proto's NonMaximumSuppressionLayerParams (which
        # coremltools' neuralnetwork backend lowers this MIL op to); the MIL op's own doc is silent.
        return [int(order[0])], True
    picked: list[int] = []
    for i in order:
        if not alive[i]:
            continue
        picked.append(int(i))
        if len(picked) == max_boxes:
            break
        alive[i] = False
        inter = np.maximum(np.minimum(hi_x, hi_x[i]) - np.maximum(lo_x, lo_x[i]), 0) * np.maximum(
            np.minimum(hi_y, hi_y[i]) - np.maximum(lo_y, lo_y[i]), 0
        )
        union = area + area[i] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where((area > 0) & (area[i] > 0), inter / union, 0.0)
        drop = iou > iou_threshold
        if per_class:
            drop &= cls == cls[i]
        alive &= ~drop
    return picked, False


@_op("non_maximum_suppression")
def _nms(c: Ctx, a: dict[str, Var]) -> list[Var]:
    """MIL ``non_maximum_suppression`` (iOS15): boxes ``[n, B, 4]`` in CENTER_SIZE_WIDTH_FIRST
    (x, y, width, height), scores ``[n, B, K]`` -> selected boxes ``[n, max_boxes, 4]``, their
    scores ``[n, max_boxes, K]``, indices ``[n, max_boxes]`` (int32) and count ``[n]``.

    Padding as CoreML's NMS layer documents it: 0 for boxes and scores, -1 for indices; and when
    no box reaches ``score_threshold`` the count is 1 and row 0 is the highest scoring box (CoreML
    avoids an empty result; TF's NonMaxSuppressionV5 returns 0 there). See :func:`_nms_one`."""
    boxes, scores = _f32(a["boxes"]), _f32(a["scores"])
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise ExportError(f"{c.where()}: boxes {list(boxes.shape)} / scores {list(scores.shape)} are not [n, B, 4] / [n, B, K]")
    iou_t = float(np.asarray(a["iou_threshold"].value, np.float32))
    score_t = float(np.asarray(a["score_threshold"].value, np.float32))
    m = int(np.asarray(a["max_boxes"].value).reshape(()))
    per_class = bool(_opt(a, "per_class_suppression", False))
    n, _, k = scores.shape
    out_boxes = np.zeros((n, m, 4), np.float32)
    out_scores = np.zeros((n, m, k), np.float32)
    out_idx = np.full((n, m), -1, np.int32)
    count = np.zeros((n,), np.int32)
    for b in range(n):
        picked, _ = _nms_one(boxes[b], scores[b], iou_t, score_t, m, per_class)
        picked = picked[:m]
        count[b] = len(picked)
        out_boxes[b, : len(picked)] = boxes[b, picked]
        out_scores[b, : len(picked)] = scores[b, picked]
        out_idx[b, : len(picked)] = picked
    batched = _b(a["boxes"], a["scores"])
    return [Var(out_boxes, batched), Var(out_scores, batched), Var(out_idx, batched), Var(count, batched)]
