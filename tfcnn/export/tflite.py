"""TFLite/LiteRT variants: conversion, and reading back what the written file really is.

Four default variants, one conversion each: float32; float16 weights; dynamic-range int8
weights; full-integer int8 (uint8 in/out) calibrated on training images. Two opt-in ones:
int16x8 (int16 activations, int8 weights, calibrated) and weight-only int8 (int8 weights
dequantized to float at run time, float compute). Every variant takes the same uint8 RGB input
so an app can swap files without touching its preprocessing.

:func:`recipe` reads back from a written file's flatbuffer what its quantization really is
(weights' stored type and granularity, activations' type, how the weights meet the activations)
and :func:`recipe_problems` says where that is not what the variant's name promises, so a file
named int8 that is really dynamic-range fails verification.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tfcnn.errors import ExportError

VARIANTS: dict[str, str] = {
    "tflite_float32": "tflite/model_float32.tflite",
    "tflite_float16": "tflite/model_float16.tflite",
    "tflite_dynamic": "tflite/model_dynamic.tflite",
    "tflite_int8": "tflite/model_int8.tflite",
}
# Opt-in variants (export.formats names them; not built by default).
EXTRA_VARIANTS: dict[str, str] = {
    "tflite_int16x8": "tflite/model_int16x8.tflite",
    "tflite_weight_only_int8": "tflite/model_weight_only_int8.tflite",
}
ALL_VARIANTS: dict[str, str] = {**VARIANTS, **EXTRA_VARIANTS}
CALIBRATED = ("tflite_int8", "tflite_int16x8")  # the variants converted with representative data

DESCRIPTIONS = {
    "tflite_float32": "float32 weights and activations",
    "tflite_float16": "float16 weights (dequantized to float32 at load), float32 activations",
    "tflite_dynamic": "dynamic-range quantization: int8 weights, float activations",
    "tflite_int8": "full-integer int8 weights and activations, uint8 input/output, calibrated on training images",
    "tflite_int16x8": "int16 activations and int8 weights (integer kernels), uint8 input cast in-graph, float32 output, "
    "calibrated on training images",
    "tflite_weight_only_int8": "weight-only int8: int8 weights dequantized to float32 at run time (DEQUANTIZE ops), "
    "float32 activations and compute",
}


def representative_images(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n training images (seeded draw) as float32 RGB, plus one guaranteeing the 0 and 255 extremes.

    The converter sets the uint8 input's scale/zero-point from the calibration range; the
    contract says raw pixels (scale 1, zero-point 0), which needs the range to be exactly
    0..255. One copy of a real image with a single 0 and a single 255 pixel pins the range
    without distorting the activation statistics the way an all-black/all-white image would.
    """
    from tfcnn.export.wrapper import to_rgb

    if len(images) == 0:
        raise ExportError("the training split is empty; full-integer quantization needs representative images")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(images), size=min(n, len(images)), replace=False)
    rgb = to_rgb(images[np.sort(idx)]).astype(np.float32)
    pin = rgb[:1].copy()
    pin[0, 0, 0, :] = 0.0
    pin[0, -1, -1, :] = 255.0
    return np.concatenate([rgb, pin])


def convert(
    variant: str, source: Path, representative: np.ndarray | None, float_names: tuple[str, ...] | None = None,
    keep_float: tuple[str, ...] = (),
) -> bytes:
    """Convert one variant from a batch-1 archive written by wrapper.mobile_archive.

    ``source`` is the uint8-input archive for every variant but full-integer int8, which takes
    the float32-input one (its converter turns the input into uint8 itself). ``float_names`` (a
    task whose graph ends in post-processing, e.g. a detector's decoding and NMS: fragments of
    the tensor names to keep float, its first being the tail's name scope; an empty tuple: only
    the outputs): full-integer int8 keeps the uint8 input and the int8 model, but those ops and
    the outputs stay float32, so class ids stay whole numbers and boxes are not rounded to 1/255
    steps (see :func:`_quantize_keeping_float`). None: uint8 outputs, everything int8.
    ``keep_float`` (``export.int8_keep_float``): regular expressions for tensors whose ops stay
    float in full-integer int8; the interface keeps its types (uint8 out unless a task's tail is float).

    int16x8 converts the uint8-input archive: the 16x8 converter accepts only float32 or int16
    at the interface, so the uint8 pixels are cast to float in-graph (a float CAST op, the one op
    the TFLITE_BUILTINS fallback is there for) and quantized to int16 by a QUANTIZE op; the
    output is dequantized to float32. Weight-only int8 is the float32 file quantized by
    ai-edge-quantizer's ``weight_only_wi8_afp32`` recipe (:func:`weight_only_int8`).
    """
    import tensorflow as tf

    if variant not in ALL_VARIANTS:
        raise ExportError(f"unknown TFLite variant {variant!r}; choose one of {', '.join(ALL_VARIANTS)}")
    if variant == "tflite_weight_only_int8":
        return weight_only_int8(convert("tflite_float32", source, None))
    converter = tf.lite.TFLiteConverter.from_saved_model(str(source))
    if variant == "tflite_float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "tflite_dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "tflite_int16x8":
        _calibrate_with(converter, variant, representative, np.uint8)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,  # only for the input's uint8 -> float CAST; recipe_problems checks the rest
        ]
    elif variant == "tflite_int8":
        _calibrate_with(converter, variant, representative, np.float32)
        converter.inference_input_type = tf.uint8
        if float_names is None and not keep_float:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_output_type = tf.uint8
            data = converter.convert()
            if not xnnpack_refused(data):
                _check_int8_interface(data)
                return data
            # else: quantize again with the refused ops kept float (XNNPACK, LiteRT's default CPU
            # delegate, would refuse the whole file at load)
        data = _quantize_keeping_float(converter, None if float_names is None else tuple(float_names), tuple(keep_float))
        _check_int8_interface(data)
        return data
    return converter.convert()


def _calibrate_with(converter, variant: str, representative: np.ndarray | None, dtype: type) -> None:
    """Post-training quantization calibrated on ``representative`` (fed as ``dtype``, the archive's input)."""
    import tensorflow as tf

    if representative is None or len(representative) == 0:
        raise ExportError(f"{variant} needs representative images (export.representative_samples)")

    def gen() -> Iterator[list[np.ndarray]]:
        for img in representative:
            yield [img[None].astype(dtype)]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = gen


def weight_only_int8(float_model: bytes) -> bytes:
    """Weight-only int8 with LiteRT's own quantizer (ai-edge-quantizer, recipe ``weight_only_wi8_afp32``).

    The TFLite converter has no weight-only mode: ``Optimize.DEFAULT`` without representative
    data is dynamic range, whose hybrid kernels quantize the activations on the fly per batch
    (and which leaves weights under 1024 elements float). Weight-only stores every conv / dense
    weight as per-channel int8 behind a DEQUANTIZE op, so the arithmetic is exactly float32's
    on the dequantized weights: 4x smaller weights, float accuracy, no integer kernels.
    """
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as exc:
        raise ExportError(
            f"tflite_weight_only_int8 needs ai-edge-quantizer ({exc}); pip install ai-edge-quantizer, "
            "or leave the variant out of export.formats"
        ) from None
    q = quantizer.Quantizer(bytes(float_model))
    q.load_quantization_recipe(recipe.weight_only_wi8_afp32())
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a size summary
        return bytes(q.quantize().quantized_model)


def calibrated_model(source: Path, representative: np.ndarray) -> bytes:
    """The float32-input archive converted with calibration statistics but not yet quantized:
    the step full-integer int8 quantizes from (and that QuantizationDebugger instruments)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(source))
    _calibrate_with(converter, "tflite_int8", representative, np.float32)
    return _calibrate_only(converter)


def _calibrate_only(converter) -> bytes:
    import tensorflow as tf

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    converter._experimental_calibrate_only = True  # noqa: SLF001  (the debugger's calibration step)
    return converter.convert()


def float_tensor_names(calibrated: bytes, names: tuple[str, ...] | None, keep: tuple[str, ...] = ()) -> list[str]:
    """The tensors kept float in full-integer int8: a task's (those named like one of ``names``,
    the first being the post-processing's name scope, and the outputs; None: no task tail) and
    those matching one of the ``keep`` regular expressions (``export.int8_keep_float``), each of
    which must match a tensor: a misspelt layer name is one error line, not a silent no-op."""
    it = interpreter(calibrated)
    details = it.get_tensor_details()
    kept: list[str] = []
    if names is not None:
        outputs = {d["name"] for d in it.get_output_details()}
        kept = [d["name"] for d in details if any(n in d["name"] for n in names) or d["name"] in outputs]
        if names and not any(names[0] in name for name in kept):
            raise ExportError(f"no tensor of the graph is named like {names[0]!r}; the post-processing would be quantized")
    for pattern in keep:
        matched = [d["name"] for d in details if re.search(pattern, d["name"])]
        if not matched:
            raise ExportError(
                f"export.int8_keep_float: no tensor of the int8 graph matches {pattern!r}; use a layer name as it "
                "appears in the tensor names of tflite/model_int8.quant_debug.json"
            )
        kept += [m for m in matched if m not in kept]
    return kept


def _quantize_keeping_float(converter, names: tuple[str, ...] | None, keep: tuple[str, ...] = ()) -> bytes:
    """Full-integer quantization except for the tensors whose names contain one of ``names``
    (the first: the post-processing's name scope) and the outputs, and those matching ``keep``
    (see :func:`float_tensor_names`; with no task tail the output stays uint8).

    The converter alone quantizes every float tensor it has a range for, post-processing
    included (a detector's class ids came out as 0.996). This is TensorFlow's selective
    quantization, the mechanism behind ``tf.lite.experimental.QuantizationDebugger``'s
    ``denylisted_nodes``: calibrate once, then quantize with the tail's tensors (matched by
    their name scope) and the output tensors denylisted, uint8 in and float32 out.
    """
    import tensorflow as tf

    calibrated = _calibrate_only(converter)
    return loadable_quantization(calibrated, names, keep, tf.float32 if names is not None else tf.uint8)[0]


# XNNPACK (LiteRT's default CPU delegate, also on Android) refuses an integer conv, depthwise
# conv, dense or transposed conv whose requantization scale input_scale * kernel_scale /
# output_scale is >= 256 ("requantization scale ... is greater or equal to 256.0"), and the
# interpreter then fails to load the whole file ("failed to create XNNPACK runtime").
XNNPACK_MAX_REQUANTIZATION = 256.0
MAX_REQUANTIZATION_ROUNDS = 4


def _parsed(model: bytes | Path) -> tuple[Any, Any, Any]:
    """A TFLite file parsed once for the flatbuffer walks below: (schema module, root Model,
    ``op_name(op)``, the builtin name of an operator, "CUSTOM" for a custom op)."""
    from tfcnn.export.tflite_metadata import model_fb

    data = Path(model).read_bytes() if isinstance(model, (str, Path)) else bytes(model)
    sfb = model_fb()
    m = sfb.Model.GetRootAs(data, 0)
    op_names = {v: k for k, v in vars(sfb.BuiltinOperator).items() if not k.startswith("_")}

    def op_name(op: Any) -> str:
        code = m.OperatorCodes(op.OpcodeIndex())
        # Codes past 127 live in BuiltinCode; older files only fill the deprecated byte.
        return op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")

    return sfb, m, op_name


def xnnpack_refused(model: bytes | Path) -> list[dict[str, Any]]:
    """The integer weighted ops of a TFLite file that XNNPACK refuses: each as ``{"op", "output"
    (its output tensor's name), "requantization_scale"}`` (the largest over output channels).

    Seen on a detector: a head conv whose ReLU output was zero on every calibration image gets a
    calibrated range of [0, 0], so an output scale of 7.8e-9, and a requantization scale of 5e4.
    """
    sfb, m, op_name = _parsed(model)
    integer = {sfb.TensorType.INT8, sfb.TensorType.UINT8}

    def scales(t: Any) -> np.ndarray:
        q = t.Quantization()
        return np.zeros(0, np.float64) if q is None or q.ScaleLength() == 0 else q.ScaleAsNumpy().astype(np.float64)

    refused: list[dict[str, Any]] = []
    for g in range(m.SubgraphsLength()):
        sg = m.Subgraphs(g)
        for k in range(sg.OperatorsLength()):
            op = sg.Operators(k)
            name = op_name(op)
            if name not in WEIGHTED_OPS:
                continue
            a, w = WEIGHTED_OPS[name]
            act, weight, out = (sg.Tensors(int(i)) for i in (op.Inputs(a), op.Inputs(w), op.Outputs(0)))
            if act.Type() not in integer or weight.Type() not in integer or out.Type() not in integer:
                continue
            s_in, s_w, s_out = scales(act), scales(weight), scales(out)
            if not (len(s_in) and len(s_w) and len(s_out)):
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                worst = float(np.max(s_in[0] * s_w / s_out[0]))
            if not worst < XNNPACK_MAX_REQUANTIZATION:  # NaN / inf refused as well
                refused.append({"op": name, "output": out.Name().decode(errors="replace"), "requantization_scale": worst})
    return refused


def loadable_quantization(
    calibrated: bytes, names: tuple[str, ...] | None, keep: tuple[str, ...], output_type: Any,
) -> tuple[bytes, list[str], list[str]]:
    """Full-integer quantization of a calibrated model (uint8 in, ``output_type`` out) that
    XNNPACK can load: (file, denylisted tensor names, the names among them added because XNNPACK
    refused their ops, see :func:`xnnpack_refused`).

    The task's tail and ``keep`` (:func:`float_tensor_names`) are denylisted first; each op
    XNNPACK would refuse then has its output denylisted too (it computes in float between a
    DEQUANTIZE and a QUANTIZE), and the model is quantized again until none is left. One warning
    names them: an int8 file with a float op is slower, one that does not load is useless. The
    per-layer analysis (:mod:`tfcnn.export.quant_debug`) calls this too, so it instruments the
    same split as the published file.
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert

    from tfcnn.util import log

    denied = float_tensor_names(calibrated, names, keep)
    added: list[str] = []
    for _ in range(MAX_REQUANTIZATION_ROUNDS):
        data = bytes(tflite_convert.mlir_quantize(
            calibrated, input_data_type=tf.uint8, output_data_type=output_type, denylisted_nodes=denied + added,
        ))
        refused = xnnpack_refused(data)
        if not refused:
            if added:
                log.warning(
                    "export: tflite_int8 keeps %d op(s) float that XNNPACK refuses in int8 (requantization scale >= %g, "
                    "usually an activation that was zero on every calibration image): %s",
                    len(added), XNNPACK_MAX_REQUANTIZATION, ", ".join(added),
                )
            return data, denied + added, added
        new = [r["output"] for r in refused if r["output"] not in denied + added]
        if not new:
            raise ExportError(
                f"tflite_int8: XNNPACK refuses {refused[0]['op']} -> {refused[0]['output']!r} (requantization scale "
                f"{refused[0]['requantization_scale']:.4g} >= {XNNPACK_MAX_REQUANTIZATION:g}) even with it denylisted; "
                "leave tflite_int8 out of export.formats or add more calibration images (export.representative_samples)"
            )
        added += new
    raise ExportError(
        f"tflite_int8: after {MAX_REQUANTIZATION_ROUNDS} rounds XNNPACK still refuses ops ({', '.join(added)} kept float so far); "
        "add calibration images (export.representative_samples) or leave tflite_int8 out of export.formats"
    )


def _check_int8_interface(data: bytes) -> None:
    details = tensor_details(data)
    q_in = details["inputs"][0]["quantization"]
    if details["inputs"][0]["dtype"] != "uint8" or not q_in or abs(q_in["scale"] - 1.0) > 1e-6 or q_in["zero_point"] != 0:
        raise ExportError(
            f"full-integer model input is {details['inputs'][0]['dtype']} with quantization {q_in}; "
            "the contract needs raw uint8 pixels (scale 1, zero point 0)"
        )


def interpreter(model: bytes | Path, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(model, (bytes, bytearray)):
        it = Interpreter(model_content=bytes(model), num_threads=threads)
    else:
        it = Interpreter(model_path=str(model), num_threads=threads)
    it.allocate_tensors()
    return it


def _tensor_entry(d: dict[str, Any]) -> dict[str, Any]:
    scale, zero = d["quantization"]
    quant = None if scale == 0.0 else {"scale": float(scale), "zero_point": int(zero)}
    return {
        "name": d["name"],
        "shape": [int(v) for v in d["shape"]],
        "dtype": np.dtype(d["dtype"]).name,
        "quantization": quant,
    }


def tensor_details(model: bytes | Path) -> dict[str, list[dict[str, Any]]]:
    """Input/output name, shape, dtype and quantization as the LiteRT interpreter reports them."""
    it = interpreter(model)
    return {
        "inputs": [_tensor_entry(d) for d in it.get_input_details()],
        "outputs": [_tensor_entry(d) for d in it.get_output_details()],
    }


# Ops that carry a weight tensor: name -> (activation input index, weight input index).
WEIGHTED_OPS = {
    "CONV_2D": (0, 1),
    "DEPTHWISE_CONV_2D": (0, 1),
    "FULLY_CONNECTED": (0, 1),
    "TRANSPOSE_CONV": (2, 1),
    "CONV_3D": (0, 1),
    "CONV_3D_TRANSPOSE": (2, 1),
}
RECIPE_KINDS = {
    "float32": "float32 weights and activations",
    "float16_weights": "float16 weights dequantized to float32, float32 activations",
    "dynamic_range": "int8 weights on float activations through hybrid kernels (activations quantized on the fly)",
    "weight_only_int8": "int8 weights dequantized to float32 (DEQUANTIZE ops), float32 activations",
    "full_integer_int8": "int8 weights and int8 activations (integer kernels)",
    "int16x8": "int8 weights and int16 activations (integer kernels)",
    "mixed": "layers of several kinds",
}


def recipe(model: bytes | Path) -> dict[str, Any]:
    """What a TFLite file's quantization really is, read from its flatbuffer (not from its name).

    For every op that carries weights (conv, depthwise conv, dense, transposed conv): the type the
    weights are *stored* as (through a DEQUANTIZE op, the type before it), per-channel (more than
    one scale) or per-tensor, the activation input's type, and how the two meet: ``integer``
    (quantized activations), ``hybrid`` (int8 weights on float activations: dynamic range),
    ``dequantized`` (int8 or float16 weights turned into float32 first) or ``float``. The
    file's ``kind`` (a :data:`RECIPE_KINDS` key) follows from those.
    """
    sfb, m, op_name = _parsed(model)
    if m.SubgraphsLength() == 0:
        raise ExportError("the TFLite file has no subgraph; it is not a model")
    sg = m.Subgraphs(0)
    type_names = {v: k.lower() for k, v in vars(sfb.TensorType).items() if not k.startswith("_")}

    def dtype(i: int) -> str:
        return type_names.get(sg.Tensors(i).Type(), "unknown")

    def per_channel(i: int) -> bool | None:
        """More than one scale; None when the weight has one output channel (the two coincide)."""
        t = sg.Tensors(i)
        q = t.Quantization()
        n = 0 if q is None else q.ScaleLength()
        axis = 0 if q is None else q.QuantizedDimension()
        shape = t.ShapeAsNumpy() if t.ShapeLength() else []
        return None if n <= 1 and len(shape) > axis and int(shape[axis]) == 1 else n > 1

    ops = [sg.Operators(k) for k in range(sg.OperatorsLength())]
    producer = {int(op.Outputs(j)): op for op in ops for j in range(op.OutputsLength())}
    layers: list[dict[str, Any]] = []
    for op in ops:
        name = op_name(op)
        if name not in WEIGHTED_OPS:
            continue
        a, w = WEIGHTED_OPS[name]
        act, weight = int(op.Inputs(a)), int(op.Inputs(w))
        through = producer.get(weight)
        dequantized = through is not None and op_name(through) == "DEQUANTIZE"
        stored = int(through.Inputs(0)) if dequantized else weight
        w_type, a_type = dtype(stored), dtype(act)
        if a_type in ("int8", "uint8", "int16"):
            how = "integer"
        elif dequantized:
            how = "dequantized"
        elif w_type in ("int8", "uint8", "int4"):
            how = "hybrid"
        else:
            how = "float"
        quantized_w = w_type in ("int8", "uint8", "int4")
        layers.append({
            "op": name,
            "weights": sg.Tensors(stored).Name().decode(errors="replace"),
            "weight_dtype": w_type,
            "weight_elements": int(np.prod(sg.Tensors(stored).ShapeAsNumpy())) if sg.Tensors(stored).ShapeLength() else 1,
            "per_channel": per_channel(stored) if quantized_w else None,
            "activation_dtype": a_type,
            "execution": how,
        })
    inputs = [dtype(int(sg.Inputs(k))) for k in range(sg.InputsLength())]
    outputs = [dtype(int(sg.Outputs(k))) for k in range(sg.OutputsLength())]
    kind = _recipe_kind(layers)
    # In an integer model, the ops still computing in float (beyond the interface's CAST /
    # QUANTIZE / DEQUANTIZE): a task's float tail in int8, or a converter's silent fallback.
    interface = {"CAST", "QUANTIZE", "DEQUANTIZE"}
    float_ops = sorted({
        op_name(op) for op in ops
        if op_name(op) not in interface and any(dtype(int(op.Outputs(j))) == "float32" for j in range(op.OutputsLength()))
    }) if kind in ("full_integer_int8", "int16x8") else None
    return {
        "kind": kind,
        "float_ops": float_ops,
        "input_dtypes": inputs,
        "output_dtypes": outputs,
        "activation_dtypes": sorted({l["activation_dtype"] for l in layers}),
        "weight_dtypes": sorted({l["weight_dtype"] for l in layers}),
        "weight_granularity": _granularity(layers),
        "layers": len(layers),
        "execution": {k: sum(l["execution"] == k for l in layers) for k in ("integer", "hybrid", "dequantized", "float")},
        "float_weights": [
            {"tensor": l["weights"], "elements": l["weight_elements"]} for l in layers if l["execution"] == "float"
        ],
        "per_layer": layers,
    }


def _granularity(layers: list[dict[str, Any]]) -> str | None:
    flags = {l["per_channel"] for l in layers if l["per_channel"] is not None}
    if not flags:
        return None
    return "per-channel" if flags == {True} else "per-tensor" if flags == {False} else "mixed"


def _recipe_kind(layers: list[dict[str, Any]]) -> str:
    """The file's kind from its weighted layers (a layer left float does not change it)."""
    how = {l["execution"] for l in layers} - {"float"}
    acts = {l["activation_dtype"] for l in layers if l["execution"] == "integer"}
    weights = {l["weight_dtype"] for l in layers if l["execution"] == "dequantized"}
    if not how:
        return "float32"
    if how == {"integer"}:
        return "int16x8" if acts == {"int16"} else "full_integer_int8" if acts <= {"int8", "uint8"} else "mixed"
    if how == {"hybrid"}:
        return "dynamic_range"
    if how == {"dequantized"}:
        return "float16_weights" if weights == {"float16"} else "weight_only_int8" if weights <= {"int8", "uint8"} else "mixed"
    return "mixed"


# What each variant's name promises: the kind, and whether a weighted layer may stay float (a
# task's float tail in int8; dynamic range has its own rule, see recipe_problems).
PROMISES: dict[str, tuple[str, bool]] = {
    "tflite_float32": ("float32", True),
    "tflite_float16": ("float16_weights", False),
    "tflite_dynamic": ("dynamic_range", False),
    "tflite_int8": ("full_integer_int8", True),
    "tflite_int16x8": ("int16x8", False),
    "tflite_weight_only_int8": ("weight_only_int8", False),
}
DYNAMIC_MIN_ELEMENTS = 1024  # the converter's dynamic range leaves smaller weight tensors float


def recipe_problems(variant: str, found: dict[str, Any]) -> list[str]:
    """One line per way the file's read-back recipe breaks what ``variant``'s name promises
    (empty: it is what it says).

    Dynamic range quantizes only weight tensors of at least 1024 elements (the converter's
    rule), so its file may keep small layers float, and a model with none that large is
    float32 as a whole: that passes, every weight being too small; a large float weight fails.
    """
    if variant not in PROMISES:
        return [f"{variant}: no recipe is known for this variant"]
    kind, float_ok = PROMISES[variant]
    problems = []
    floats = found.get("float_weights") or []
    all_small = all(w["elements"] < DYNAMIC_MIN_ELEMENTS for w in floats) and found["execution"]["float"] == len(floats)
    small_model = variant == "tflite_dynamic" and found["kind"] == "float32" and all_small
    if found["kind"] != kind and not small_model:
        layers = ", ".join(f"{n} {how}" for how, n in found["execution"].items() if n)
        problems.append(
            f"the file is {found['kind']}, {RECIPE_KINDS.get(found['kind'], '?')} (weighted layers: {layers or 'none'}); "
            f"{variant} promises {kind}, {RECIPE_KINDS[kind]}; re-export"
        )
    if variant == "tflite_dynamic":
        large = [w["tensor"] for w in floats if w["elements"] >= DYNAMIC_MIN_ELEMENTS]
        if large:
            problems.append(f"{len(large)} weight tensors of >= {DYNAMIC_MIN_ELEMENTS} elements stay float ({', '.join(large[:3])}); "
                            "dynamic range quantizes them to int8")
    elif kind != "float32" and not float_ok and found["execution"]["float"]:
        names = ", ".join(w["tensor"] for w in floats[:3])
        problems.append(f"{found['execution']['float']} of {found['layers']} weighted layers run in float ({names}); "
                        f"{variant} quantizes every layer")
    if kind == "int16x8" and found.get("float_ops"):
        problems.append(f"ops computing in float32: {', '.join(found['float_ops'])}; {variant} runs every op on int16 activations")
    if found["input_dtypes"] != ["uint8"]:
        problems.append(f"inputs are {found['input_dtypes']}; the contract needs one uint8 image input")
    return problems


class LiteRTRunner:
    """Batch-1 LiteRT inference returning float probabilities (dequantizing uint8 outputs)."""

    def __init__(self, path: Path, threads: int = 1):
        self.path = Path(path)
        self.it = interpreter(self.path, threads)
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]
        if self.inp["dtype"] != np.uint8:
            raise ExportError(f"{self.path}: input dtype {np.dtype(self.inp['dtype']).name}, the contract needs uint8")
        scale, zero = self.out["quantization"]
        self._deq = (float(scale), int(zero)) if scale else None

    def raw(self, image: np.ndarray) -> np.ndarray:
        self.it.set_tensor(self.inp["index"], image[None])
        self.it.invoke()
        return self.it.get_tensor(self.out["index"])[0].copy()

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        out = self.raw(image)
        if self._deq is not None:
            scale, zero = self._deq
            return (out.astype(np.float32) - zero) * scale
        return out.astype(np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        if not len(images):
            return np.zeros((0, int(self.out["shape"][-1])), np.float32)
        return np.stack([self.probabilities(img) for img in images])


class LiteRTSignatureRunner:
    """Batch-1 LiteRT inference through the ``serving_default`` signature, every output by name
    (dequantized when quantized): for artifacts with several outputs, whose tensor order in the
    flatbuffer is not the signature's (a reconstruction model's image, score and flag)."""

    def __init__(self, path: Path, threads: int = 1):
        self.path = Path(path)
        self.it = interpreter(self.path, threads)
        self.runner = self.it.get_signature_runner("serving_default")
        inp = self.runner.get_input_details()
        self.input_name = next(iter(inp))
        if inp[self.input_name]["dtype"] != np.uint8:
            raise ExportError(f"{self.path}: input dtype {np.dtype(inp[self.input_name]['dtype']).name}, the contract needs uint8")
        self._deq = {}
        for name, d in self.runner.get_output_details().items():
            scale, zero = d["quantization"]
            self._deq[name] = (float(scale), int(zero)) if scale else None

    def raw(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return self.runner(**{self.input_name: image[None]})

    def named(self, image: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name, value in self.raw(image).items():
            q = self._deq.get(name)
            v = value[0]
            out[name] = (v.astype(np.float32) - q[1]) * q[0] if q is not None else np.asarray(v, np.float32)
        return out

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        rows = [self.named(img) for img in images]
        return {k: np.stack([r[k] for r in rows]) for k in (rows[0] if rows else {})}


def signature_outputs(path: Path) -> list[str]:
    """The output names of a TFLite file's serving_default signature (empty when it has none)."""
    sigs = interpreter(path).get_signature_list()
    return list(sigs.get("serving_default", {}).get("outputs", []))
