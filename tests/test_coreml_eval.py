"""The numpy MIL evaluator (tfcnn/export/formats/coreml_eval.py) checked against independent references.

CoreML cannot run off macOS, so verify's CoreML numbers on Linux are only as good as this
evaluator. It is checked three ways: op by op against tf.nn / torch / numpy and against the MIL
ops' own ``value_inference`` (programs built with coremltools' MIL Builder, converted without
optimisation passes so each op stays as written); whole tfcnn packages (every model builder,
float16 and float32) against Keras; and mutated packages (labels, image scale/bias, pad type,
weight bytes, op types) that must diverge or raise. Conversions are shared per module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tfcnn.errors import ExportError

RNG = np.random.default_rng(0)


def _ct():
    from tfcnn.export.coreml import _ct

    return _ct()


def _convert_program(prog, path: Path, precision: str = "float32") -> Path:
    """A MIL Builder program as an .mlpackage, with no passes (each op is evaluated as built)."""
    import contextlib
    import io

    ct = _ct()
    with contextlib.redirect_stderr(io.StringIO()):
        model = ct.convert(
            prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15, skip_model_load=True,
            compute_precision=ct.precision.FLOAT32 if precision == "float32" else ct.precision.FLOAT16,
            pass_pipeline=ct.PassPipeline.EMPTY,
        )
    model.save(str(path))
    return path


def _run(pkg: Path, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    from tfcnn.export.formats.coreml_eval import MILProgram

    return MILProgram(pkg).run(feeds)


def _nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1)


def _nchw(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


# --------------------------------------------------------------------------- blob file


def test_blob_records_match_coremltools_writer(tmp_path):
    """Our struct parsing reads what coremltools' own C++ BlobWriter writes, for every dtype we map."""
    from coremltools.libmilstoragepython import _BlobStorageWriter

    from tfcnn.export.formats.coreml_eval import BLOB_DTYPES, WeightFile

    path = tmp_path / "weight.bin"
    writer = _BlobStorageWriter(str(path))
    cases = {"fp16": np.float16, "float": np.float32, "uint8": np.uint8, "int8": np.int8, "int16": np.int16,
             "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32}
    written = {}
    for method, dt in cases.items():
        arr = RNG.integers(0, 100, size=7).astype(dt)
        raw = arr.view(np.uint16) if dt is np.float16 else arr  # the writer takes float16 as its bit pattern
        written[method] = (getattr(writer, f"write_{method}_data")(raw), arr)
    del writer
    wf = WeightFile(path)
    for method, (offset, arr) in written.items():
        np.testing.assert_array_equal(wf.read(offset, arr.dtype, arr.shape, method), arr)
    assert {np.dtype(d).newbyteorder("=") for d in cases.values()} == {d.newbyteorder("=") for d in BLOB_DTYPES.values()}
    with pytest.raises(ExportError, match="program declares"):
        wf.read(written["fp16"][0], np.dtype(np.float32), (7,), "w")  # dtype code checked
    with pytest.raises(ExportError, match="shape \\[8\\] needs 16"):
        wf.read(written["fp16"][0], np.dtype(np.float16), (8,), "w")  # size checked


# --------------------------------------------------------------------------- per-op references


@pytest.fixture(scope="module")
def conv_pool_pkg(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """One float32 program with every conv / pool variant as a named output."""
    from coremltools.converters.mil import Builder as mb

    ct = _ct()
    w = {
        "w3": RNG.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "wg": RNG.normal(size=(4, 2, 3, 3)).astype(np.float32),  # groups = 2 on 4 input channels
        "wd": RNG.normal(size=(4, 1, 3, 3)).astype(np.float32),  # depthwise
        "b": RNG.normal(size=(4,)).astype(np.float32),
    }

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3, 10, 10)), mb.TensorSpec(shape=(2, 4, 9, 9))],
                opset_version=ct.target.iOS15)
    def prog(x, z):
        return (
            mb.conv(x=x, weight=w["w3"], pad_type="valid", name="valid"),
            mb.conv(x=x, weight=w["w3"], bias=w["b"], pad_type="same", strides=[2, 2], name="same_s2"),
            mb.conv(x=x, weight=w["w3"], pad_type="custom", pad=[2, 0, 1, 3], strides=[1, 2], name="custom"),
            mb.conv(x=x, weight=w["w3"], pad_type="same", dilations=[2, 2], name="dilated"),
            mb.conv(x=z, weight=w["wg"], pad_type="same", groups=2, name="grouped"),
            mb.conv(x=z, weight=w["wd"], bias=w["b"], pad_type="same", groups=4, strides=[2, 2], name="depthwise"),
            mb.max_pool(x=z, kernel_sizes=[3, 3], strides=[2, 2], pad_type="same", name="max_same"),
            mb.avg_pool(x=z, kernel_sizes=[3, 3], strides=[2, 2], pad_type="same", exclude_padding_from_average=True, name="avg_same_excl"),
            mb.avg_pool(x=z, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1], ceil_mode=True,
                        exclude_padding_from_average=False, name="avg_ceil_incl"),
            mb.avg_pool(x=z, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid", ceil_mode=True,
                        exclude_padding_from_average=True, name="avg_ceil_excl"),
            mb.max_pool(x=z, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid", ceil_mode=True, name="max_ceil"),
        )

    return _convert_program(prog, tmp_path_factory.mktemp("mil") / "convpool.mlpackage"), w


def test_conv_variants_match_tf_nn(conv_pool_pkg):
    import tensorflow as tf

    pkg, w = conv_pool_pkg
    x = RNG.normal(size=(2, 3, 10, 10)).astype(np.float32)
    z = RNG.normal(size=(2, 4, 9, 9)).astype(np.float32)
    out = _run(pkg, x=x, z=z)
    hwio = lambda k: k.transpose(2, 3, 1, 0)  # noqa: E731  MIL [O, I, kh, kw] -> TF [kh, kw, I, O]

    def tf_conv(inp, k, **kw):
        return _nchw(tf.nn.conv2d(_nhwc(inp), hwio(k), **kw))

    ref = {
        "valid": tf_conv(x, w["w3"], strides=1, padding="VALID"),
        "same_s2": tf_conv(x, w["w3"], strides=2, padding="SAME") + w["b"].reshape(1, -1, 1, 1),
        "custom": tf_conv(x, w["w3"], strides=[1, 1, 2, 1], padding=[[0, 0], [2, 0], [1, 3], [0, 0]]),
        "dilated": tf_conv(x, w["w3"], strides=1, padding="SAME", dilations=2),
        "grouped": tf_conv(z, w["wg"], strides=1, padding="SAME"),  # TF infers groups from the kernel
        "depthwise": _nchw(tf.nn.depthwise_conv2d(_nhwc(z), w["wd"].transpose(2, 3, 0, 1), [1, 2, 2, 1], "SAME"))
        + w["b"].reshape(1, -1, 1, 1),
        "max_same": _nchw(tf.nn.max_pool2d(_nhwc(z), 3, 2, "SAME")),
        "avg_same_excl": _nchw(tf.nn.avg_pool2d(_nhwc(z), 3, 2, "SAME")),  # TF's SAME average excludes padding
    }
    for name, r in ref.items():
        np.testing.assert_allclose(out[name], r, atol=2e-5, rtol=1e-5, err_msg=name)


def test_pool_ceil_mode_and_padding_count_match_torch(conv_pool_pkg):
    import torch
    import torch.nn.functional as F

    pkg, _ = conv_pool_pkg
    x = RNG.normal(size=(2, 3, 10, 10)).astype(np.float32)
    z = RNG.normal(size=(2, 4, 9, 9)).astype(np.float32)
    out = _run(pkg, x=x, z=z)
    t = torch.tensor(z)
    ref = {
        "avg_ceil_incl": F.avg_pool2d(t, 3, 2, padding=1, ceil_mode=True, count_include_pad=True),
        "avg_ceil_excl": F.avg_pool2d(t, 2, 2, ceil_mode=True, count_include_pad=False),
        "max_ceil": F.max_pool2d(t, 2, 2, ceil_mode=True),
    }
    for name, r in ref.items():
        assert out[name].shape == tuple(r.shape), name
        np.testing.assert_allclose(out[name], r.numpy(), atol=1e-6, err_msg=name)


# Ops with a numpy reference; each is also built on constants to read MIL's own value_inference.
def _cases(x: np.ndarray, y: np.ndarray, v: np.ndarray, m: np.ndarray) -> dict[str, tuple[str, dict, np.ndarray]]:
    """name -> (MIL op, kwargs with the placeholders as strings, numpy reference)."""
    sig = 1 / (1 + np.exp(-x))
    e = np.exp(x - x.max(1, keepdims=True))
    mean, var, gamma, beta = (RNG.uniform(0.5, 1.5, 3).astype(np.float32) for _ in range(4))
    bn = (x - mean.reshape(1, 3, 1, 1)) / np.sqrt(var.reshape(1, 3, 1, 1) + 1e-3) * gamma.reshape(1, 3, 1, 1) + beta.reshape(1, 3, 1, 1)
    wl, bl = RNG.normal(size=(5, 4)).astype(np.float32), RNG.normal(size=(5,)).astype(np.float32)
    return {
        "add": ("add", {"x": "x", "y": "y"}, x + y),
        "sub": ("sub", {"x": "x", "y": "y"}, x - y),
        "mul": ("mul", {"x": "x", "y": "y"}, x * y),
        "real_div": ("real_div", {"x": "x", "y": "y"}, x / y),
        "maximum": ("maximum", {"x": "x", "y": "y"}, np.maximum(x, y)),
        "minimum": ("minimum", {"x": "x", "y": "y"}, np.minimum(x, y)),
        "relu": ("relu", {"x": "x"}, np.maximum(x, 0)),
        "relu6": ("relu6", {"x": "x"}, np.clip(x * 4, 0, 6)),
        "sigmoid": ("sigmoid", {"x": "x"}, sig),
        "silu": ("silu", {"x": "x"}, x * sig),
        "inverse": ("inverse", {"x": "y", "epsilon": np.float32(0.25)}, 1 / (y + np.float32(0.25))),
        "inverse_default": ("inverse", {"x": "y"}, 1 / (y + np.float32(1e-4))),
        "rsqrt": ("rsqrt", {"x": "y", "epsilon": np.float32(0.5)}, 1 / np.sqrt(y + np.float32(0.5))),
        "clip": ("clip", {"x": "x", "alpha": np.float32(-0.3), "beta": np.float32(0.4)}, np.clip(x, -0.3, 0.4)),
        "softmax": ("softmax", {"x": "x", "axis": 1}, e / e.sum(1, keepdims=True)),
        "batch_norm": ("batch_norm", {"x": "x", "mean": mean, "variance": var, "gamma": gamma, "beta": beta, "epsilon": np.float32(1e-3)}, bn),
        "reduce_mean": ("reduce_mean", {"x": "x", "axes": [2, 3], "keep_dims": True}, x.mean((2, 3), keepdims=True)),
        "matmul": ("matmul", {"x": "m", "y": "m", "transpose_y": True}, m @ m.T),
        "linear": ("linear", {"x": "m", "weight": wl, "bias": bl}, m @ wl.T + bl),
        "reshape": ("reshape", {"x": "x", "shape": [2, -1, 4]}, x.reshape(2, -1, 4)),
        "transpose": ("transpose", {"x": "x", "perm": [0, 2, 3, 1]}, x.transpose(0, 2, 3, 1)),
        "squeeze": ("squeeze", {"x": "v", "axes": [1]}, v[:, 0]),
        "expand_dims": ("expand_dims", {"x": "v", "axes": [-1]}, v[..., None]),
        "concat": ("concat", {"values": ["x", "y"], "axis": 1}, np.concatenate([x, y], 1)),
        "pad_constant": ("pad", {"x": "x", "pad": [1, 2, 0, 1], "mode": "constant", "constant_val": np.float32(0.5)},
                         np.pad(x, [(0, 0), (0, 0), (1, 2), (0, 1)], constant_values=0.5)),
        "pad_reflect": ("pad", {"x": "x", "pad": [1, 1, 2, 2], "mode": "reflect"}, np.pad(x, [(0, 0), (0, 0), (1, 1), (2, 2)], mode="reflect")),
        "pad_replicate": ("pad", {"x": "x", "pad": [1, 1, 2, 2], "mode": "replicate"}, np.pad(x, [(0, 0), (0, 0), (1, 1), (2, 2)], mode="edge")),
        "cast_fp16": ("cast", {"x": "x", "dtype": "fp16"}, x.astype(np.float16)),
        "cast_int32": ("cast", {"x": "x", "dtype": "int32"}, np.trunc(x * 4).astype(np.int32)),
    }


# Ops whose MIL definition computes a value from constant inputs (value_inference); checked below.
VALUE_INFERENCE = {"add", "sub", "mul", "real_div", "maximum", "minimum", "inverse", "inverse_default", "rsqrt", "clip", "softmax", "reduce_mean", "matmul",
                   "linear", "reshape", "transpose", "squeeze", "expand_dims", "concat", "pad_constant", "cast_fp16",
                   "cast_int32"}


@pytest.fixture(scope="module")
def elementwise(tmp_path_factory):
    from coremltools.converters.mil import Builder as mb

    ct = _ct()
    x = RNG.normal(size=(2, 3, 4, 4)).astype(np.float32)
    y = RNG.uniform(0.5, 2.0, size=(2, 3, 4, 4)).astype(np.float32)
    v = RNG.normal(size=(2, 1, 6)).astype(np.float32)
    m = RNG.normal(size=(3, 4)).astype(np.float32)
    cases = _cases(x, y, v, m)
    scale4 = {"relu6", "cast_int32"}  # exercise the clip range / truncation toward zero

    @mb.program(input_specs=[mb.TensorSpec(shape=a.shape) for a in (x, y, v, m)], opset_version=ct.target.iOS15)
    def prog(x, y, v, m):
        env = {"x": x, "y": y, "v": v, "m": m}
        outs = []
        for name, (op, kw, _) in cases.items():
            args = {k: ([env[i] for i in a] if isinstance(a, list) and a and isinstance(a[0], str) else env.get(a, a) if isinstance(a, str) and a in env else a)
                    for k, a in kw.items()}
            if name in scale4:
                args["x"] = mb.mul(x=args["x"], y=np.float32(4.0), name=f"{name}_x4")
            outs.append(getattr(mb, op)(**args, name=name))
        return tuple(outs)

    pkg = _convert_program(prog, tmp_path_factory.mktemp("mil") / "elementwise.mlpackage")
    return pkg, (x, y, v, m), cases, _run(pkg, x=x, y=y, v=v, m=m)


def test_elementwise_shape_and_layout_ops_match_numpy(elementwise):
    pkg, _, cases, out = elementwise
    from tfcnn.export.formats.coreml_eval import MILProgram

    assert {c[0] for c in cases.values()} <= set(MILProgram(pkg).op_types())
    for name, (_, _, ref) in cases.items():
        # iOS15 programs return float32 outputs: coremltools casts the float16 one back (exactly)
        assert out[name].dtype == (np.float32 if ref.dtype == np.float16 else ref.dtype) and out[name].shape == ref.shape, name
        np.testing.assert_allclose(out[name], ref, atol=1e-6, rtol=1e-6, err_msg=name)


def test_ops_match_mil_value_inference(elementwise):
    """Each op built on constants: coremltools computes it with the op's value_inference."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function

    _, (x, y, v, m), cases, out = elementwise
    env = {"x": x, "y": y, "v": v, "m": m}
    checked = set()
    with Function({}):
        for name, (op, kw, _) in cases.items():
            args = {k: ([env[i] for i in a] if isinstance(a, list) and a and isinstance(a[0], str) else env.get(a, a) if isinstance(a, str) and a in env else a)
                    for k, a in kw.items()}
            if name in {"relu6", "cast_int32"}:
                args["x"] = args["x"] * np.float32(4.0)
            val = getattr(mb, op)(**args).val
            if val is None:
                continue
            np.testing.assert_allclose(out[name], np.asarray(val), atol=1e-6, rtol=1e-6, err_msg=name)
            checked.add(name)
    assert VALUE_INFERENCE <= checked, f"value_inference no longer covers {VALUE_INFERENCE - checked}"


def test_float16_is_emulated_op_by_op(tmp_path):
    """In a float16 program every op's result is rounded to float16, as on the device."""
    from coremltools.converters.mil import Builder as mb

    ct = _ct()
    k = np.float16(1.0009765625)  # 1 + 2**-10: float16's spacing at 1

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64))], opset_version=ct.target.iOS15)
    def prog(x):
        h = mb.cast(x=x, dtype="fp16")
        for i in range(4):
            h = mb.mul(x=h, y=k, name=f"m{i}")
        return mb.cast(x=h, dtype="fp32", name="out")

    pkg = _convert_program(prog, tmp_path / "fp16.mlpackage")
    x = RNG.uniform(1, 2, size=(1, 64)).astype(np.float32)
    want = x.astype(np.float16)
    for _ in range(4):
        want = (want.astype(np.float32) * np.float32(k)).astype(np.float16)  # round after each op
    got = _run(pkg, x=x)["out"]
    np.testing.assert_array_equal(got, want.astype(np.float32))
    assert not np.array_equal(got, (x.astype(np.float16).astype(np.float32) * np.float32(k) ** 4).astype(np.float16).astype(np.float32))


def test_unknown_op_fails_naming_it(elementwise, tmp_path):
    from tfcnn.export.formats.coreml_eval import MILProgram

    pkg = _mutate_proto(elementwise[0], tmp_path, lambda ops: _first(ops, "sigmoid").__setattr__("type", "hard_sigmoid_x"))
    with pytest.raises(ExportError, match="op\\(s\\) hard_sigmoid_x .* never skips"):
        MILProgram(pkg)


# --------------------------------------------------------------------------- tfcnn packages vs Keras


def _keras_zoo(channels: int = 3):
    """A classifier touching conv (same/valid, stride, dilation, groups, depthwise), BN, pools, pad, concat."""
    from tfcnn.models.lazy import keras

    L = keras.layers
    inp = keras.Input((16, 16, channels), name="image")
    x = L.Rescaling(1 / 127.5, offset=-1.0)(inp)
    a = L.Conv2D(8, 3, strides=2, padding="same", activation="relu6")(x)  # 16 -> 8, asymmetric same pad
    b = L.Conv2D(8, 3, dilation_rate=2, padding="same", activation="sigmoid")(L.AveragePooling2D(2)(x))
    x = L.Concatenate()([a, b])
    x = L.BatchNormalization()(x)
    x = L.DepthwiseConv2D(3, padding="same", activation="silu")(x)
    x = L.Conv2D(8, 3, padding="same")(x)  # (Keras runs groups > 1 through XLA, which coremltools cannot convert)
    x = L.ZeroPadding2D(((1, 0), (0, 1)))(x)
    x = L.AveragePooling2D(3, strides=2, padding="same")(x)
    x = L.Conv2D(12, 3, padding="valid", activation="relu")(x)
    x = L.MaxPooling2D(2, padding="same")(x)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(4, name="logits")(x)
    keras.utils.set_random_seed(1)
    model = keras.Model(inp, out)
    _perturb(model, np.random.default_rng(1), 0.2)
    return model


def _perturb(model, rng: np.random.Generator, spread: float) -> None:
    """BN statistics and biases that do not fold away (a fresh model has zeros and ones there)."""
    for w in model.weights:
        if "moving_mean" in w.path or "beta" in w.path or w.path.endswith("bias"):
            w.assign(rng.normal(0, spread, w.shape).astype("float32"))
        elif "moving_variance" in w.path or "gamma" in w.path:
            w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))


def _agree_up_to_ties(got: np.ndarray, ref: np.ndarray, tol: float) -> None:
    """Top-1 must agree wherever Keras's top-2 margin exceeds the allowed probability error."""
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * tol
    assert clear.any(), "no image has a clear top-1; the check would be vacuous"
    np.testing.assert_array_equal(got[clear].argmax(1), ref[clear].argmax(1))


LABELS = ["cat", "dog", "emu", "yak"]


def _savedmodel(model, path: Path) -> Path:
    import tensorflow as tf

    from tfcnn.export.wrapper import mobile_archive

    mobile_archive(model, tf.float32).write_out(str(path), verbose=False)
    return path


def _package(model, path: Path, precision: str, labels: list[str] = LABELS) -> Path:
    """A model through tfcnn's own path: mobile wrapper (float32 pixels in) -> coreml.convert."""
    from tfcnn.export.coreml import convert
    from tfcnn.export.wrapper import geometry_of

    g = geometry_of(model)
    sm = _savedmodel(model, path.parent / f"{path.stem}_savedmodel")
    convert(sm, path, height=g.height, width=g.width, labels=labels, precision=precision, author="t", license="MIT",
            version="1", description="test", input_description="uint8 RGB")
    return path


SCALE, BIAS = 2.0 / 3.0, [10.0, -20.0, 30.0]


def _scaled_package(saved_model: Path, path: Path) -> Path:
    """float32, with an ImageType scale/bias (tfcnn itself uses 1 and 0), converted by coremltools directly."""
    import contextlib
    import io

    ct = _ct()
    with contextlib.redirect_stderr(io.StringIO()):
        ml = ct.convert(str(saved_model), source="tensorflow", convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15,
                        inputs=[ct.ImageType(name="image", shape=(1, 16, 16, 3), scale=SCALE, bias=BIAS, color_layout=ct.colorlayout.RGB)],
                        classifier_config=ct.ClassifierConfig(LABELS), compute_precision=ct.precision.FLOAT32, skip_model_load=True)
    ml.save(str(path))
    return path


def _keras_probs(model, images: np.ndarray) -> np.ndarray:
    from tfcnn.models.lazy import keras

    x = images.astype("float32")
    if model.inputs[0].shape[-1] == 1:
        x = (x @ np.asarray([0.299, 0.587, 0.114], "float32"))[..., None]
    return keras.ops.convert_to_numpy(keras.ops.softmax(model(x)))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    model = _keras_zoo()
    images = np.random.default_rng(2).integers(0, 256, size=(48, 16, 16, 3), dtype=np.uint8)
    pkg16 = _package(model, root / "zoo16.mlpackage", "float16")
    return {
        "model": model,
        "images": images,
        "keras": _keras_probs(model, images),
        "keras_scaled": _keras_probs(model, images * np.float32(SCALE) + np.asarray(BIAS, np.float32)),
        "float16": pkg16,
        "float32": _scaled_package(root / "zoo16_savedmodel", root / "zoo32.mlpackage"),  # pixels * SCALE + BIAS
    }


def test_zoo_matches_keras_in_both_precisions(zoo):
    from tfcnn.export.formats.coreml_eval import CoreMLEvaluator

    ev32, ev16 = CoreMLEvaluator(zoo["float32"]), CoreMLEvaluator(zoo["float16"])
    ops = set(ev16.program.op_types())
    assert {"conv", "avg_pool", "max_pool", "concat", "pad", "relu6", "sigmoid", "silu", "reduce_mean", "softmax", "classify"} <= ops, ops
    assert ev16.program.float16 and not ev32.program.float16
    ref = zoo["keras"]
    p32, p16 = ev32.predict(zoo["images"], LABELS), ev16.predict(zoo["images"])
    assert ev16._batch_ok and ev32._batch_ok  # these programs run batched
    assert np.abs(p32 - zoo["keras_scaled"]).max() <= 1e-5  # the float32 package also scales and shifts pixels
    assert 1e-5 < np.abs(p16 - ref).max() <= 5e-3  # float16 rounding shows, and stays small
    _agree_up_to_ties(p16, ref, 5e-3)
    _agree_up_to_ties(p32, zoo["keras_scaled"], 1e-5)
    labels, dicts = ev16.classify(zoo["images"][:3])
    assert labels == [LABELS[i] for i in p16[:3].argmax(1)] and list(dicts[0]) == LABELS


def test_batched_and_one_by_one_agree_exactly(zoo):
    from tfcnn.export.formats.coreml_eval import CoreMLEvaluator

    ev = CoreMLEvaluator(zoo["float16"])
    batched = ev.predict(zoo["images"][:8])
    one = np.concatenate([ev.predict(zoo["images"][i:i + 1]) for i in range(8)])
    np.testing.assert_array_equal(batched, one)


# The six builders' small variants that still reach every kind of block they have.
TINY = {
    "tiny_cnn": ({}, 16, 1),
    "seed_cnn": ({"options": {"batch_norm": True, "hidden": 16}}, 16, 1),
    "compact_cnn": ({"se": True, "activation": "silu", "options": {"filters": [8, 16], "convs": [1, 1], "head": "gdconv"}}, 16, 3),
    "mobilenet": ({"se": True, "width": 0.25, "depth": 1, "activation": "hard_silu",
                   "options": {"stages": [[16, 1, 1], [24, 1, 2]], "head_filters": 32}}, 16, 3),
    "resnet": ({"depth": 8, "se": True, "options": {"base_filters": 8}}, 16, 1),
    "vgg": ({"activation": "relu6", "options": {"blocks": 2, "convs_per_block": 1, "base_filters": 8, "head": "dense", "dense_units": 16}}, 16, 3),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_model_builder_exports_and_evaluates(name, tmp_path):
    from tfcnn.config import ModelConfig
    from tfcnn.export.formats.coreml_eval import OPS, CoreMLEvaluator
    from tfcnn.models import build_model

    kw, size, ch = TINY[name]
    from tfcnn.models.lazy import keras

    keras.utils.set_random_seed(3)
    model = build_model(ModelConfig(name=name, **kw), (size, size, ch), 4, [90.0] * ch, [60.0] * ch)
    _perturb(model, np.random.default_rng(3), 0.1)
    ev = CoreMLEvaluator(_package(model, tmp_path / f"{name}.mlpackage", "float16"))
    assert set(ev.program.op_types()) - {"const"} <= set(OPS)
    images = np.random.default_rng(4).integers(0, 256, size=(16, size, size, 3), dtype=np.uint8)
    ref, got = _keras_probs(model, images), ev.predict(images, LABELS)
    assert np.isfinite(got).all() and np.abs(got - ref).max() <= 5e-3, np.abs(got - ref).max()
    _agree_up_to_ties(got, ref, 5e-3)


# --------------------------------------------------------------------------- mutations must fail


def _model_file(pkg: Path) -> Path:
    from tfcnn.export.formats.coreml_eval import MODEL_FILE

    return pkg / MODEL_FILE


def _mutate_proto(pkg: Path, tmp_path: Path, edit) -> Path:
    """A copy of ``pkg`` whose main block's operations went through ``edit(ops)``."""
    Model_pb2 = _ct().proto.Model_pb2
    out = tmp_path / f"mutated_{len(list(tmp_path.iterdir()))}.mlpackage"
    shutil.copytree(pkg, out)
    spec = Model_pb2.Model()
    spec.ParseFromString(_model_file(out).read_bytes())
    fn = spec.mlProgram.functions["main"]
    edit(fn.block_specializations[fn.opset].operations)
    _model_file(out).write_bytes(spec.SerializeToString())
    return out


def _first(ops, op_type: str, where=lambda op: True):
    return next(op for op in ops if op.type == op_type and where(op))


def _const_of(ops, name: str):
    return _first(ops, "const", lambda op: op.outputs[0].name == name)


def _predict(pkg: Path, images: np.ndarray) -> np.ndarray:
    from tfcnn.export.formats.coreml_eval import CoreMLEvaluator

    return CoreMLEvaluator(pkg).predict(images, LABELS)


def test_swapped_labels_diverge_from_labels_txt(zoo, tmp_path):
    good = _predict(zoo["float16"], zoo["images"])
    c = int(np.bincount(good.argmax(1), minlength=4).argmax())  # swap the most predicted class with another
    d = (c + 1) % 4

    def swap(ops):
        values = _first(ops, "classify").inputs["classes"].arguments[0].value.immediateValue.list.values
        a, b = values[c].immediateValue.tensor.strings.values, values[d].immediateValue.tensor.strings.values
        a[0], b[0] = b[0], a[0]

    bad = _predict(_mutate_proto(zoo["float16"], tmp_path, swap), zoo["images"])
    perm = list(range(4))
    perm[c], perm[d] = d, c
    np.testing.assert_array_equal(bad[:, perm], good)  # probabilities land under the wrong names
    changed = bad.argmax(1) != good.argmax(1)
    assert (changed == np.isin(good.argmax(1), [c, d])).all()  # exactly the images of the two classes flip
    assert (bad.argmax(1) == zoo["keras"].argmax(1)).mean() < 0.995  # below the float16 agreement bar: verify fails


def test_changed_image_scale_and_bias_diverge(zoo, tmp_path):
    """ImageType scale/bias are ops coremltools writes into the program; a changed value is seen."""
    from tfcnn.export.formats.coreml_eval import CoreMLEvaluator

    images, want = zoo["images"], zoo["keras_scaled"]
    assert np.abs(CoreMLEvaluator(zoo["float32"]).predict(images, LABELS) - want).max() <= 1e-5

    def set_value(suffix: str, value: list[float]):
        def edit(ops):
            op = _first(ops, "add" if suffix == "biased" else "mul", lambda o: o.outputs[0].name == f"image__{suffix}__")
            c = _const_of(ops, op.inputs["y"].arguments[0].name)
            c.attributes["val"].immediateValue.tensor.floats.values[:] = value
        return edit

    for suffix, value in (("scaled", [1.0 / 255.0]), ("biased", [0.0, 0.0, 0.0])):
        bad = CoreMLEvaluator(_mutate_proto(zoo["float32"], tmp_path, set_value(suffix, value))).predict(images, LABELS)
        assert np.abs(bad - want).max() > 1e-4, suffix  # 10x the evaluator's own float32 error bound


def test_flipped_pad_type_diverges_or_fails(zoo, tmp_path):
    """The stride-2 'same' conv pads 0 before / 1 after; padding before instead keeps the shape."""

    def flip(to: str, pad: list[int] | None = None):
        def edit(ops):
            conv = _first(ops, "conv")  # the first conv is the stride-2 'same' one
            c = _const_of(ops, conv.inputs["pad_type"].arguments[0].name)
            assert list(c.attributes["val"].immediateValue.tensor.strings.values) == ["same"]
            c.attributes["val"].immediateValue.tensor.strings.values[:] = [to]
            if pad is not None:
                _const_of(ops, conv.inputs["pad"].arguments[0].name).attributes["val"].immediateValue.tensor.ints.values[:] = pad
        return edit

    good = _predict(zoo["float32"], zoo["images"])
    assert np.abs(good - zoo["keras_scaled"]).max() <= 1e-5
    shifted = _predict(_mutate_proto(zoo["float32"], tmp_path, flip("custom", [1, 0, 1, 0])), zoo["images"])
    assert np.abs(shifted - good).max() > 1e-4  # same shape, shifted windows: the numbers change
    with pytest.raises(ExportError, match="op conv .* computed shape \\[1, 8, 7, 7\\], the program declares \\[1, 8, 8, 8\\]"):
        _predict(_mutate_proto(zoo["float32"], tmp_path, flip("valid")), zoo["images"][:1])


def _weight_bin(pkg: Path) -> Path:
    return pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"


def _copy(pkg: Path, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    shutil.copytree(pkg, out)
    return out


def test_corrupted_weight_bytes_diverge_or_fail(zoo, tmp_path):
    import struct

    images = zoo["images"][:8]
    good = _predict(zoo["float16"], images)
    data = _weight_bin(zoo["float16"]).read_bytes()
    first = 64  # the first blob's metadata record follows the 64-byte file header
    _, _, size, offset = struct.unpack_from("<IIQQ", data, first)

    flipped = bytearray(data)
    flipped[offset: offset + size] = bytes(b ^ 0x40 for b in flipped[offset: offset + size])  # flip an exponent bit
    pkg = _copy(zoo["float16"], tmp_path, "flipped.mlpackage")
    _weight_bin(pkg).write_bytes(bytes(flipped))
    bad = _predict(pkg, images)
    assert not np.allclose(bad, good, atol=1e-3)

    no_sentinel = bytearray(data)
    no_sentinel[first: first + 4] = b"\0\0\0\0"
    pkg = _copy(zoo["float16"], tmp_path, "sentinel.mlpackage")
    _weight_bin(pkg).write_bytes(bytes(no_sentinel))
    with pytest.raises(ExportError, match="sentinel 0x00000000 is not 0xDEADBEEF"):
        _predict(pkg, images)

    pkg = _copy(zoo["float16"], tmp_path, "truncated.mlpackage")
    _weight_bin(pkg).write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="lies outside the .*-byte file"):
        _predict(pkg, images)

    pkg = _copy(zoo["float16"], tmp_path, "header.mlpackage")
    _weight_bin(pkg).write_bytes(data[:40])
    with pytest.raises(ExportError, match="shorter than the 64-byte blob file header"):
        _predict(pkg, images)


def test_wrong_input_and_model_type_fail_clearly(zoo, elementwise, tmp_path):
    from tfcnn.export.formats.coreml_eval import CoreMLEvaluator

    with pytest.raises(ExportError, match=r"the evaluator expects one image input, the model has \['x', 'y'"):
        CoreMLEvaluator(elementwise[0])  # a program of several tensor inputs: not what tfcnn exports

    ev = CoreMLEvaluator(zoo["float16"])
    with pytest.raises(ExportError, match="CoreML input must be uint8 \\[N, 16, 16, 3\\]"):
        ev.predict(zoo["images"][:, :8])
    with pytest.raises(ExportError, match="lacks label\\(s\\) \\['zebra'\\]"):
        ev.predict(zoo["images"][:2], LABELS[:3] + ["zebra"])
    pkg = _copy(zoo["float16"], tmp_path, "garbage.mlpackage")
    _model_file(pkg).write_bytes(b"\x07not a protobuf")
    with pytest.raises(ExportError, match="not a CoreML Model protobuf"):
        CoreMLEvaluator(pkg)
    with pytest.raises(ExportError, match="is missing; is .* a CoreML .mlpackage"):
        CoreMLEvaluator(tmp_path / "nothing.mlpackage")
