"""TFLite/LiteRT variants: conversion, and reading back what the written file really is.

Four variants, one conversion each: float32; float16 weights; dynamic-range int8 weights;
full-integer int8 (uint8 in/out) calibrated on training images. Every variant takes the same
uint8 RGB input so an app can swap files without touching its preprocessing.
"""

from __future__ import annotations

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

DESCRIPTIONS = {
    "tflite_float32": "float32 weights and activations",
    "tflite_float16": "float16 weights (dequantized to float32 at load), float32 activations",
    "tflite_dynamic": "dynamic-range quantization: int8 weights, float activations",
    "tflite_int8": "full-integer int8 weights and activations, uint8 input/output, calibrated on training images",
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


def convert(variant: str, source: Path, representative: np.ndarray | None, float_names: tuple[str, ...] | None = None) -> bytes:
    """Convert one variant from a batch-1 archive written by wrapper.mobile_archive.

    ``source`` is the uint8-input archive for the float variants and the float32-input one for
    full-integer int8 (whose converter turns the input into uint8 itself). ``float_names`` (a
    task whose graph ends in post-processing, e.g. a detector's decoding and NMS: fragments of
    the tensor names to keep float, its first being the tail's name scope; an empty tuple: only
    the outputs): full-integer int8 keeps the uint8 input and the int8 model, but those ops and
    the outputs stay float32, so class ids stay whole numbers and boxes are not rounded to 1/255
    steps (see :func:`_quantize_keeping_float`). None: uint8 outputs, everything int8.
    """
    import tensorflow as tf

    if variant not in VARIANTS:
        raise ExportError(f"unknown TFLite variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(source))
    if variant == "tflite_float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "tflite_dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "tflite_int8":
        if representative is None or len(representative) == 0:
            raise ExportError("tflite_int8 needs representative images (export.representative_samples)")

        def gen() -> Iterator[list[np.ndarray]]:
            for img in representative:
                yield [img[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = gen
        converter.inference_input_type = tf.uint8
        if float_names is not None:
            data = _quantize_keeping_float(converter, tuple(float_names))
            _check_int8_interface(data)
            return data
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_output_type = tf.uint8
    data = converter.convert()
    if variant == "tflite_int8":
        _check_int8_interface(data)
    return data


def _quantize_keeping_float(converter, names: tuple[str, ...]) -> bytes:
    """Full-integer quantization except for the tensors whose names contain one of ``names``
    (the first: the post-processing's name scope) and the outputs.

    The converter alone quantizes every float tensor it has a range for, post-processing
    included (a detector's class ids came out as 0.996). This is TensorFlow's selective
    quantization, the mechanism behind ``tf.lite.experimental.QuantizationDebugger``'s
    ``denylisted_nodes``: calibrate once, then quantize with the tail's tensors (matched by
    their name scope) and the output tensors denylisted, uint8 in and float32 out.
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    converter._experimental_calibrate_only = True  # noqa: SLF001  (the debugger's calibration step)
    calibrated = converter.convert()
    it = interpreter(calibrated)
    outputs = {d["name"] for d in it.get_output_details()}
    keep = [d["name"] for d in it.get_tensor_details() if any(n in d["name"] for n in names) or d["name"] in outputs]
    if names and not any(names[0] in name for name in keep):
        raise ExportError(f"no tensor of the graph is named like {names[0]!r}; the post-processing would be quantized")
    return bytes(
        tflite_convert.mlir_quantize(calibrated, input_data_type=tf.uint8, output_data_type=tf.float32, denylisted_nodes=keep)
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
