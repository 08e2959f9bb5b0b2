"""ONNX, converted by tf2onnx from the serving SavedModel's ``serving_default`` signature.

The same graph TF Serving runs (uint8 RGB in; ``probabilities``, ``class_id`` and ``label`` out,
the label table included as an ONNX-ML op), so an ONNX Runtime deployment cannot drift from the
served model. The opset is fixed here and recorded in the contract; verify runs the file with
ONNX Runtime and holds it to the SavedModel's limits (max |dp| <= 1e-5, 100% agreement).
"""

from __future__ import annotations

import contextlib
import io
import logging
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tfcnn.errors import ExportError
from tfcnn.export.formats.base import PREREQUISITES, PRIMARY_OUTPUT, BuildContext, ExportFormat, Prerequisite, register, runner_result
from tfcnn.export.openvino_check import OpenVINOCheck
from tfcnn.util import format_bytes

FILE = "onnx/model.onnx"
# 17: every current ONNX Runtime (1.14+) and most accelerators' runtimes load it, and it has
# every op the wrapper needs; tf2onnx 1.17 converts up to opset 18.
OPSET = 17
INPUT = "image"
OUTPUTS = ("probabilities", "class_id", "label")
_ELEM = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 8: "string", 10: "float16"}


def _serving_savedmodel(ctx: BuildContext) -> Path:
    """The SavedModel with the serving signatures: the version's own when built, else a scratch copy."""
    if "savedmodel" in ctx.built:
        return ctx.out
    from tfcnn.export.savedmodel import write_savedmodel

    path = ctx.scratch / "serving"
    path.mkdir(parents=True, exist_ok=True)
    write_savedmodel(ctx.model, ctx.out / "labels.txt", path, ctx.task)
    return path


PREREQUISITES.register("serving_savedmodel", Prerequisite("serving_savedmodel", "serving SavedModel", _serving_savedmodel))


def convert(saved_model: Path, out_path: Path, opset: int = OPSET) -> None:
    """tf2onnx on ``serving_default``, with its hash table (the labels) carried over."""
    from tf2onnx import convert as tf2onnx_convert
    from tf2onnx import tf_loader

    for name in ("tf2onnx", "tf2onnx.tf_loader", "tf2onnx.shape_inference", "tf2onnx.graph", "tf2onnx.tfonnx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
            str(saved_model), None, None, "serve", ["serving_default"], None, False,
            return_initialized_tables=True, return_tensors_to_rename=True,
        )
        tf2onnx_convert._convert_common(
            graph_def, name="serving_default", opset=opset, input_names=inputs, output_names=outputs,
            initialized_tables=tables, tensors_to_rename=renames, output_path=str(out_path),
        )


def read_back(path: Path) -> dict[str, Any]:
    """Opset, producer, inputs and outputs as the written file declares them."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def tensors(values) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            out.append({"name": v.name, "dtype": _ELEM.get(t.elem_type, str(t.elem_type)), "shape": dims})
        return out

    opsets = {o.domain or "ai.onnx": int(o.version) for o in model.opset_import}
    return {
        "opset": opsets.get("ai.onnx"),
        "opsets": dict(sorted(opsets.items())),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": tensors(model.graph.input),
        "outputs": tensors(model.graph.output),
    }


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _expected_outputs(output_contract: dict[str, Any]) -> tuple[str, ...]:
    """The graph's output names: a classifier's three, or the tensors another task's contract lists."""
    return tuple(output_contract.get("serving_tensors") or output_contract.get("tensors") or OUTPUTS)


def _interface_problems(got: dict[str, Any], h: int, w: int, num_classes: int, expected: tuple[str, ...] = OUTPUTS) -> list[str]:
    fails = []
    inp = got["inputs"][0] if len(got["inputs"]) == 1 else None
    if inp is None or inp["name"] != INPUT or inp["dtype"] != "uint8" or inp["shape"][1:] != [h, w, 3]:
        fails.append(f"input is {got['inputs']}, expected one uint8 {INPUT!r} of shape [N, {h}, {w}, 3]")
    outs = {o["name"]: o for o in got["outputs"]}
    if sorted(outs) != sorted(expected):
        fails.append(f"outputs are {sorted(outs)}, expected {', '.join(expected)}")
    elif "probabilities" not in expected:
        pass  # another task's outputs: their names are what the contract promises
    elif outs["probabilities"]["shape"][-1:] != [num_classes] or outs["probabilities"]["dtype"] != "float32":
        fails.append(f"probabilities output is {outs['probabilities']}, expected float32 [N, {num_classes}]")
    if got["opset"] != OPSET:
        fails.append(f"opset is {got['opset']}, expected {OPSET}")
    return fails


def build(ctx: BuildContext) -> dict[str, Any]:
    path = ctx.out / FILE
    convert(ctx.need("serving_savedmodel"), path)
    got = read_back(path)
    g = ctx.geometry
    expected = _expected_outputs(ctx.task.output_contract(ctx.labels))
    fails = _interface_problems(got, g.height, g.width, len(ctx.labels), expected)
    if expected == OUTPUTS:
        # The label op must map class ids exactly like labels.txt (the table came from that file).
        probe = np.random.default_rng(0).integers(0, 256, size=(4, g.height, g.width, 3), dtype=np.uint8)
        probs, class_id, label = _session(path, 1).run(list(OUTPUTS), {INPUT: probe})
        if not np.array_equal(class_id, probs.argmax(1)) or [str(x) for x in label] != [ctx.labels[i] for i in class_id]:
            fails.append(f"class_id/label outputs {list(class_id)} / {list(label)} do not match argmax and labels.txt")
    if fails:
        raise ExportError(f"{FILE}: " + "; ".join(fails))
    return {
        "format": "onnx",
        "file": FILE,
        "opset": got["opset"],
        "opsets": got["opsets"],
        "producer": got["producer"],
        "source_signature": "serving_default",
        "inputs": got["inputs"],
        "outputs": got["outputs"],
        "runtime": "onnxruntime (CPUExecutionProvider)",
        "_detail": f"opset {got['opset']}, {format_bytes(path.stat().st_size)}",
    }


def static_check(version_dir: Path, entry: dict[str, Any], card: dict[str, Any]) -> list[str]:
    """The file still declares the interface and opset the contract recorded."""
    try:
        got = read_back(version_dir / entry["file"])
    except Exception as exc:  # a damaged file is a verification failure, not a crash
        return [f"{entry['file']}: cannot read the ONNX model ({type(exc).__name__}: {exc})"]
    c = card["contract"]["input"]
    expected = _expected_outputs(card["contract"].get("output") or {})
    fails = _interface_problems(got, c["height"], c["width"], len(card["labels"]), expected)
    if got["opset"] != entry.get("opset"):
        fails.append(f"opset is {got['opset']}, contract.json says {entry.get('opset')}")
    return fails


class OnnxRuntimeRunner:
    """ONNX Runtime's CPU provider with fixed threads, fed uint8 RGB batches."""

    def __init__(self, version_dir: Path, entry: dict[str, Any], threads: int):
        self.session = _session(Path(version_dir) / entry["file"], threads)
        self.threads = threads
        names = [o.name for o in self.session.get_outputs() if o.type != "tensor(string)"]
        # A classifier's probabilities, or every numeric output of another task's graph.
        self.names = [PRIMARY_OUTPUT] if PRIMARY_OUTPUT in names else names

    def predict(self, images: np.ndarray, batch: int = 256) -> "np.ndarray | dict[str, np.ndarray]":
        parts = [self.session.run(self.names, {INPUT: images[i : i + batch]}) for i in range(0, len(images), batch)]
        if not parts:
            return np.zeros((0, 0), np.float32)
        return runner_result({n: np.concatenate([p[j] for p in parts]).astype(np.float32) for j, n in enumerate(self.names)})

    def one(self, image: np.ndarray) -> Callable[[], object]:
        feed = {INPUT: np.ascontiguousarray(image[None])}
        return lambda: self.session.run(self.names[:1], feed)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("tf2onnx", "onnx", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


register(
    ExportFormat(
        name="onnx",
        summary=f"ONNX (opset {OPSET}) from the serving signature, run with ONNX Runtime",
        files=("onnx/*",),
        build=build,
        runner=OnnxRuntimeRunner,
        thresholds=lambda entry: {"max_abs_diff": 1e-5, "agreement": 1.0},
        needs=("serving_savedmodel",),
        order=50,
        tasks=("classification", "reconstruction", "detection", "segmentation"),
        static_check=static_check,
        client_checks=(OpenVINOCheck("onnx", max_abs_diff=1e-5),),  # a second runtime besides ONNX Runtime
        card_settings=lambda ctx: {"onnx": {"opset": OPSET, "tools": _versions()}},
    )
)
