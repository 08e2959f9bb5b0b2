"""CoreML ML Program (.mlpackage) conversion and its checks.

Converted straight from the TF wrapper (coremltools no longer goes through ONNX). The input is
an ImageType: CoreML hands the model float pixels computed as scale * pixel + bias, and our
wrapper wants 0..255 RGB, so scale = 1 and bias = 0. coremltools cannot run predictions off
macOS: `check_spec` verifies what can be read from the package itself everywhere, `predict` runs
coremltools on macOS, and elsewhere verify runs the program with
:mod:`tfcnn.export.formats.coreml_eval` (tfcnn's numpy MIL evaluator).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tfcnn.errors import ExportError

PRECISIONS = ("float16", "float32")
LABEL_OUTPUT = "classLabel"
PROBS_OUTPUT = "classLabel_probs"
PRECISION_KEY = "com.tfcnn.compute_precision"
SKIP_REASON = "coremltools can run CoreML predictions only on macOS; elsewhere use tfcnn.export.formats.coreml_eval.CoreMLEvaluator"


def _ct():
    # coremltools logs a warning per missing native proxy and per untested TF/sklearn version on
    # Linux; they say nothing about our model, so keep them out of the progress output.
    for name in ("coremltools", "coremltools.models", "coremltools.converters"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import coremltools as ct

    return ct


def convert(
    float_saved_model: Path,
    out_path: Path,
    *,
    height: int,
    width: int,
    labels: list[str],
    precision: str,
    author: str,
    license: str,
    version: str,
    description: str,
    input_description: str,
    outputs: list[str] | None = None,
    output_description: str = "",
) -> dict[str, Any]:
    """Write `out_path` (.mlpackage) and return what the spec check reads back from it.

    ``outputs`` (a task other than classification): plain multiarray outputs with these names
    (the wrapper signature's keys) instead of the classifier's label and probabilities.
    """
    if precision not in PRECISIONS:
        raise ExportError(f"export.coreml_precision = {precision!r}; choose float16 or float32")
    ct = _ct()
    # coremltools draws tqdm bars on stderr for every pass; the export prints its own step lines.
    with contextlib.redirect_stderr(io.StringIO()):
        model = _convert(ct, float_saved_model, height, width, None if outputs else labels, precision)
    if outputs:
        model = _rename_outputs(ct, model, outputs)
    model.author = author
    model.license = license
    model.version = version
    model.short_description = description
    model.input_description["image"] = input_description
    if outputs:
        for name in outputs:
            model.output_description[name] = output_description or name
    else:
        model.output_description[LABEL_OUTPUT] = "most likely class label"
        model.output_description[PROBS_OUTPUT] = "class label -> softmax probability"
    model.user_defined_metadata[PRECISION_KEY] = precision
    model.save(str(out_path))
    return read_spec(out_path)


def _rename_outputs(ct, model, names: list[str]):
    """coremltools names a TF2 signature's outputs Identity, Identity_1, ... in the signature's
    flattening order (its keys sorted); give them the signature's names back."""
    spec = model.get_spec()
    got = [o.name for o in spec.description.output]
    want = sorted(names)
    if len(got) != len(want):
        raise ExportError(f"CoreML conversion produced outputs {got}, expected {len(want)} ({', '.join(want)})")
    for old, new in zip(got, want):
        if old != new:
            ct.utils.rename_feature(spec, old, new)
    return ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True)


def _convert(ct, saved_model: Path, height: int, width: int, labels: list[str] | None, precision: str):
    return ct.convert(
        str(saved_model),
        source="tensorflow",
        inputs=[
            ct.ImageType(
                name="image", shape=(1, height, width, 3), scale=1.0, bias=[0.0, 0.0, 0.0], color_layout=ct.colorlayout.RGB
            )
        ],
        classifier_config=ct.ClassifierConfig(list(labels), predicted_feature_name=LABEL_OUTPUT) if labels is not None else None,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS15,
        compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32,
        skip_model_load=True,
    )


def _dtype_name(ct, value: int) -> str:
    return ct.proto.MIL_pb2.DataType.Name(value)


def read_spec(path: Path) -> dict[str, Any]:
    """Inputs, outputs, labels, precision and metadata as stored in the package."""
    ct = _ct()
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    desc = spec.description
    inputs = []
    for f in desc.input:
        kind = f.type.WhichOneof("Type")
        entry: dict[str, Any] = {"name": f.name, "type": kind}
        if kind == "imageType":
            it = f.type.imageType
            entry.update(
                height=int(it.height),
                width=int(it.width),
                color_space=ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(it.colorSpace),
            )
        inputs.append(entry)
    outputs = [{"name": f.name, "type": f.type.WhichOneof("Type")} for f in desc.output]
    labels: list[str] = []
    dtypes: set[str] = set()
    program = spec.mlProgram
    for fn in program.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                for out in op.outputs:
                    if out.type.WhichOneof("type") == "tensorType":
                        dtypes.add(_dtype_name(ct, out.type.tensorType.dataType))
                if op.type == "classify":
                    for arg in op.inputs["classes"].arguments:
                        for v in arg.value.immediateValue.list.values:
                            labels.extend(v.immediateValue.tensor.strings.values)
    float_types = sorted(d for d in dtypes if d.startswith("FLOAT"))
    meta = desc.metadata
    return {
        "model_type": spec.WhichOneof("Type"),
        "specification_version": int(spec.specificationVersion),
        "inputs": inputs,
        "outputs": outputs,
        "predicted_feature_name": desc.predictedFeatureName,
        "predicted_probabilities_name": desc.predictedProbabilitiesName,
        "labels": list(labels),
        "compute_precision": "float16" if "FLOAT16" in float_types else "float32",
        "tensor_float_types": float_types,
        "metadata": {
            "author": meta.author,
            "license": meta.license,
            "version": meta.versionString,
            "short_description": meta.shortDescription,
            "user_defined": dict(meta.userDefined),
            "input_descriptions": {f.name: f.shortDescription for f in desc.input},
            "output_descriptions": {f.name: f.shortDescription for f in desc.output},
        },
    }


def check_spec(path: Path, expected: dict[str, Any]) -> list[str]:
    """Compare the package with the contract; returns failure lines (empty = all good)."""
    if not Path(path).exists():
        return [f"{path} is missing"]
    try:
        got = read_spec(path)
    except Exception as exc:  # a tampered package is a verification failure, not a crash
        return [f"{path}: cannot read the CoreML spec ({type(exc).__name__}: {exc})"]
    fails = []
    if got["model_type"] != "mlProgram":
        fails.append(f"model type is {got['model_type']}, expected mlProgram")
    if got["specification_version"] < 6:
        fails.append(f"specification version {got['specification_version']} < 6 (iOS15 ML Program)")
    inp = got["inputs"][0] if got["inputs"] else {}
    want_in = {"name": "image", "type": "imageType", "height": expected["height"], "width": expected["width"], "color_space": "RGB"}
    for k, v in want_in.items():
        if inp.get(k) != v:
            fails.append(f"input {k} is {inp.get(k)!r}, expected {v!r}")
    names = {o["name"]: o["type"] for o in got["outputs"]}
    if expected.get("outputs"):  # a task other than classification: plain multiarrays by name
        want_out = {n: "multiArrayType" for n in expected["outputs"]}
        if names != want_out:
            fails.append(f"outputs are {names}, expected {want_out}")
    elif names.get(LABEL_OUTPUT) != "stringType" or names.get(PROBS_OUTPUT) != "dictionaryType":
        fails.append(f"classifier outputs are {names}, expected {LABEL_OUTPUT} (string) and {PROBS_OUTPUT} (dictionary)")
    if not expected.get("outputs") and got["labels"] != list(expected["labels"]):
        fails.append(f"class labels {got['labels']} differ from labels.txt {expected['labels']}")
    if got["compute_precision"] != expected["precision"]:
        fails.append(f"compute precision is {got['compute_precision']} (tensor types {got['tensor_float_types']}), expected {expected['precision']}")
    md = got["metadata"]
    for key in ("author", "license", "version"):
        if str(md[key]) != str(expected[key]):
            fails.append(f"metadata {key} is {md[key]!r}, expected {expected[key]!r}")
    if not md["short_description"] or not md["input_descriptions"].get("image"):
        fails.append("metadata lacks a short description or the image input description")
    return fails


def predict(path: Path, images: np.ndarray, labels: list[str] | None = None) -> np.ndarray:
    """macOS only: probabilities for uint8 RGB images, in ``labels`` order (default: the package's)."""
    if sys.platform != "darwin":
        raise ExportError(SKIP_REASON)
    ct = _ct()
    from PIL import Image

    model = ct.models.MLModel(str(path))
    labels = list(labels) if labels is not None else read_spec(path)["labels"]
    out = []
    for img in images:
        res = model.predict({"image": Image.fromarray(img, mode="RGB")})
        probs = res[PROBS_OUTPUT]
        out.append([float(probs[name]) for name in labels])
    return np.asarray(out, np.float32)
