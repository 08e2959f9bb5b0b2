"""OpenVINO: a second, independent runtime on the very files verify ran, output for output.

Verify compares each artifact with Keras through the runtime its clients use (TensorFlow for the
SavedModel, LiteRT for the .tflite files, ONNX Runtime for the .onnx). Intel's OpenVINO has its
own readers of all three formats (its TensorFlow, TFLite and ONNX frontends) and its own CPU
kernels. When it computes the same numbers from the same bytes, the file means what its first
runtime made of it, not something one runtime's kernels or lenient reader happen to produce; when
it does not, the file is read differently by another implementation of the same ops, which is
what an app meets on a GPU delegate, NNAPI or another inference engine. Each format registers an
:class:`OpenVINOCheck` among its ``client_checks`` (the record says how its outputs are named and
which limits hold); verify calls it after the format's runner with the test images and that
runner's outputs, so nothing in verify names OpenVINO.

How a file is read and run (:func:`run_file`, in the native child process of
:mod:`tfcnn.export.isolate`: OpenVINO is C++, and a crash there becomes an error line):

* through ``openvino.frontend`` with the outputs cut to the numeric ones the first runtime returned:
  a classifier's SavedModel and ONNX graph also return the label *string*, looked up in a
  ``HashTableV2`` / ``ai.onnx.ml.CategoryMapper`` op that OpenVINO cannot convert; cutting the
  graph there is what ``openvino.convert_model(output=...)`` does, without that tool's telemetry;
* compiled for the CPU with ``INFERENCE_PRECISION_HINT = f32`` (the CPU plugin's default is bf16
  on CPUs with bf16/AMX instructions) and without its low-precision transformations (see
  :data:`SEMANTICS`), so a quantized file is run as its quantization parameters define it;
* a file with a static batch of 1 (every .tflite) image by image, the others in batches;
* quantized outputs dequantized with the file's own scale and zero point (read with the LiteRT
  interpreter), so both sides are compared in the same units.

What is compared, per output: a float output's max |OpenVINO - first runtime| against
``max_abs_diff`` (plus ``quantized_steps`` of a quantized output's scale, and at least
``quantized_exact`` of its values on the very same step); an integer-valued output
(a mask, class ids, an anomaly flag) by the share of equal elements against
``discrete_agreement`` (a tie in the scores below it flips it without any misreading); a
classifier's probabilities also by top-1 agreement (ties within the tolerance agree).

The verdict is reported per format (verification.json's ``openvino`` section, verification.md,
the report, a log line) and does **not** decide whether verify passes:

* ``passed: True``: OpenVINO agrees within the limits;
* ``passed: False``: OpenVINO ran the file and disagrees. Keras is the arbiter, and verify has
  already compared the file's own runtime with it: if that comparison passed, OpenVINO is the one
  misreading the file (OpenVINO 2026.4.1 drops the fused bias/ReLU of a UNet's TFLite
  TRANSPOSE_CONV, while LiteRT matches Keras to 1e-6), and if it failed, verify fails already.
  A second runtime can corroborate or accuse but never outvote Keras, so its disagreement is a
  portability warning, listed as such (verification.md "Cross-check warnings"), not a failure;
* ``passed: None`` with ``unsupported``: OpenVINO cannot read, compile or run the file (e.g. no
  translator for TFLite's NON_MAX_SUPPRESSION_V5, or a crash). Said, never counted as a pass;
  not a failure for the same reason: OpenVINO is not a runtime this export promises to serve;
* ``openvino`` not importable or broken: verify FAILS, unless the user skipped it
  (``--skip-openvino`` / ``export.skip_clients``), as for MediaPipe: a declared dependency that is
  missing is a broken installation, and its checks did not run.

Importing ``openvino`` sends a usage event to Google Analytics unless the user opted out (its
``openvino_telemetry`` counts a missing consent file as consent). tfcnn never talks to the
network at run time, so :func:`import_openvino` blocks that module; OpenVINO then falls back to
its own no-op stub.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

CLIENT = "openvino"
DEVICE = "CPU"
PRECISION = "f32"
# The CPU plugin's low-precision transformations replace a quantized graph's FakeQuantize pairs by
# its own int8 kernels, which round differently: on a tiny full-integer classifier they moved the
# outputs by up to 18 steps of 1/256 from LiteRT (its first convolution, on the uint8 input, by 34
# steps), while without them OpenVINO reproduced LiteRT's int8 outputs exactly. The cross-check is
# about what the file means, so it runs the reference semantics. The property is internal to the
# CPU plugin; an OpenVINO that refuses it is said in the result (``low_precision_transforms``).
SEMANTICS = {"LP_TRANSFORMS_MODE": False}
_PRIMARY = {"tflite": "LiteRT", "savedmodel": "TensorFlow", "onnx": "ONNX Runtime"}
_ARRAY = "probabilities"  # the key a runner's plain array (a classifier's probabilities) is compared under


def import_openvino() -> Any:
    """``openvino`` with its telemetry module blocked (see the module docstring)."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


def version() -> str:
    """OpenVINO's release, e.g. ``2026.4.1`` (ImportError when it is not installed)."""
    return str(import_openvino().__version__).split("-")[0]


def reason(text: str) -> str:
    """OpenVINO's multi-line error as one line: what failed, without its source-location lines."""
    noise = ("Check '", "Exception from ", "FrontEnd API failed", "Model wasn't fully converted", "Summary:", "Failed operations")
    lines = [" ".join(line.split()) for line in str(text).splitlines()]
    kept = [line.removeprefix("-- ") for line in lines if line and not line.startswith(noise)]
    joined = "; ".join(dict.fromkeys(kept)).replace(" with a message:;", ":")
    return joined[:400] or " ".join(str(text).split())[:400]


def run_file(path: str, outputs: list[str], images: np.ndarray, batch: int = 256) -> dict[str, Any]:
    """Read ``path`` with OpenVINO's frontend for its kind, keep only ``outputs`` (tensor names),
    compile it for the CPU in float32 and run ``images`` (uint8 NHWC). Runs in the native child.

    Returns ``{"outputs": {name: array}, "precision", "frontend", "low_precision_transforms"}``;
    raises ValueError with OpenVINO's reason (one line) when it cannot read, compile or run it.
    """
    ov = import_openvino()
    from openvino.frontend import FrontEndManager

    name = Path(path).name
    try:
        fe = FrontEndManager().load_by_model(path)
        if fe is None:
            raise ValueError(f"no OpenVINO frontend reads {name}")
        graph = fe.load(path)
        places = [graph.get_place_by_tensor_name(n) for n in outputs]
        if any(p is None for p in places):
            lost = [n for n, p in zip(outputs, places) if p is None]
            raise ValueError(f"OpenVINO's {fe.get_name()} frontend finds no tensor {lost} in {name}")
        graph.override_all_outputs(places)
        model = fe.convert(graph)
        if len(model.inputs) != 1:
            raise ValueError(f"OpenVINO sees {len(model.inputs)} inputs in {name}, expected one image input")
        dim = model.inputs[0].get_partial_shape()[0]
        step = 1 if dim.is_static and dim.get_length() == 1 else batch
        # batch 1 (every .tflite) runs fastest on one thread: more only contend for the cores
        config = {"INFERENCE_PRECISION_HINT": PRECISION, **({"INFERENCE_NUM_THREADS": 1} if step == 1 else {})}
        core, lpt = ov.Core(), "off"
        try:
            compiled = core.compile_model(model, DEVICE, {**config, **SEMANTICS})
        except RuntimeError as exc:
            if "LP_TRANSFORMS_MODE" not in str(exc):
                raise
            compiled = core.compile_model(model, DEVICE, config)
            lpt = "on (this OpenVINO does not accept LP_TRANSFORMS_MODE)"
        request = compiled.create_infer_request()
        ports = {n: compiled.output(n) for n in outputs}
        parts: dict[str, list[np.ndarray]] = {n: [] for n in outputs}
        for i in range(0, len(images), step):
            request.set_input_tensor(ov.Tensor(np.ascontiguousarray(images[i : i + step])))
            request.infer()
            for n, port in ports.items():
                parts[n].append(request.get_tensor(port).data.copy())  # the request reuses its buffers
    except Exception as exc:  # noqa: BLE001 - RuntimeError, OpConversionFailure, ...: a multi-line text each
        raise ValueError(reason(str(exc))) from None
    return {
        "outputs": {n: np.concatenate(p) if p else np.zeros((0,), np.float32) for n, p in parts.items()},
        "precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
        "frontend": fe.get_name(),
        "low_precision_transforms": lpt,
    }


def _litert_outputs(path: Path, keys: list[str]) -> list[tuple[str, str, tuple[float, int] | None]]:
    """(output key, tensor name, quantization) of a .tflite file's outputs as its LiteRT runner
    returns them: a classifier's first output as "probabilities", another task's by signature name."""
    from tfcnn.export.tflite import interpreter

    it = interpreter(path)

    def quant(d: dict[str, Any]) -> tuple[float, int] | None:
        scale, zero = d["quantization"]
        return (float(scale), int(zero)) if scale and np.dtype(d["dtype"]).kind in "iu" else None

    if keys == [_ARRAY] and len(it.get_output_details()) == 1:
        d = it.get_output_details()[0]
        return [(_ARRAY, d["name"], quant(d))]
    details = it.get_signature_runner("serving_default").get_output_details()
    return [(k, details[k]["name"], quant(details[k])) for k in keys if k in details]


def _integral(*arrays: np.ndarray) -> bool:
    """Whole numbers only (a dequantized 0/1 flag is 1.0000001, hence the tolerance)."""
    return all(a.size and np.allclose(a, np.round(a), rtol=0.0, atol=1e-5) for a in arrays)


@dataclass(frozen=True)
class OpenVINOCheck:
    """One format's OpenVINO cross-check, a client check (:attr:`ExportFormat.client_checks`).

    ``reader``: how the outputs' tensor names are found: ``"tflite"`` (the LiteRT interpreter's
    names and quantization), ``"savedmodel"`` or ``"onnx"`` (the signature's / graph's own names;
    the SavedModel is the version directory). Limits, see the module docstring.
    """

    reader: str
    max_abs_diff: float = 1e-5
    quantized_steps: float = 0.0
    agreement: float = 1.0
    discrete_agreement: float = 0.999
    quantized_exact: float = 0.0
    client: ClassVar[str] = CLIENT

    def __call__(self, path: Path, images: np.ndarray, outputs: Any, labels: list[str]) -> dict[str, Any]:
        from tfcnn.export.isolate import shared_worker
        from tfcnn.util import first_line

        path = Path(path)
        shown = "the SavedModel" if self.reader == "savedmodel" else path.name
        ref = dict(outputs) if isinstance(outputs, dict) else {_ARRAY: np.asarray(outputs)}
        result: dict[str, Any] = {
            "client": f"openvino ({DEVICE}, INFERENCE_PRECISION_HINT={PRECISION})",
            "openvino": version(),  # ImportError: verify decides (a failure unless the user skipped OpenVINO)
            "compared_with": _PRIMARY.get(self.reader, "the file's runtime"),
            "checked": int(len(images)),
            "limits": {"max_abs_diff": self.max_abs_diff, "quantized_steps": self.quantized_steps, "quantized_exact": self.quantized_exact,
                       "agreement": self.agreement, "discrete_agreement": self.discrete_agreement},
        }
        names = _litert_outputs(path, list(ref)) if self.reader == "tflite" else [(k, k, None) for k in ref]
        missing = [k for k in ref if k not in {key for key, _, _ in names}]
        if missing:
            return _done({**result, "passed": False, "warnings": [f"{shown}: outputs {missing} have no tensor in the file"]})
        target = (path if path.is_dir() else path.parent) if self.reader == "savedmodel" else path
        started = time.perf_counter()
        try:
            ran = shared_worker().call(run_file, str(target.resolve()), [t for _, t, _ in names], np.ascontiguousarray(images))
        except Exception as exc:  # noqa: BLE001 - an unreadable file or a crash is reported, verify goes on
            text = first_line(exc).removeprefix("ValueError: ").replace("the converter's child process", "OpenVINO's child process")
            return _done({**result, "passed": None, "unsupported": f"OpenVINO {result['openvino']} cannot read or run {shown}: {text}"})
        result.update({k: ran[k] for k in ("precision", "frontend", "low_precision_transforms")})
        result["seconds"] = round(time.perf_counter() - started, 3)  # read, compile and run, in the child
        compared, failures = {}, []
        for key, tensor, q in names:
            row, fails = self._compare(key, np.asarray(ran["outputs"][tensor]), np.asarray(ref[key]), q)
            compared[key] = row
            failures += fails
        result["outputs"] = compared
        result["max_abs_diff"] = max((r["max_abs_diff"] for r in compared.values() if "max_abs_diff" in r), default=None)
        if "top1_agreement" in compared.get(_ARRAY, {}):
            result["top1_agreement"] = compared[_ARRAY]["top1_agreement"]
        if not len(images):
            failures.append("no image to check")
        result["passed"] = not failures
        if failures:  # a portability warning, not a verify failure (see the module docstring)
            result["warnings"] = [f"{shown}: {f}" for f in failures]
        return _done(result)

    def _compare(self, key: str, got: np.ndarray, want: np.ndarray, q: tuple[float, int] | None) -> tuple[dict[str, Any], list[str]]:
        """One output: its numbers and the limits it breaks (NaN breaks every limit)."""
        primary = _PRIMARY.get(self.reader, "the file's runtime")
        tol = self.max_abs_diff
        if q is not None:
            got = (got.astype(np.float64) - q[1]) * q[0]
            tol += self.quantized_steps * q[0]
        got, want = got.astype(np.float64), want.astype(np.float64)
        if got.shape != want.shape:
            return {"shape": list(got.shape)}, [f"{key}: OpenVINO returns shape {list(got.shape)}, {primary} {list(want.shape)}"]
        bad = int((~np.isfinite(got)).sum())
        if bad:
            return {"non_finite": bad}, [f"{key}: OpenVINO returns {bad} non-finite values"]
        if key != _ARRAY and _integral(got, want):  # a mask, class ids, a flag: equal or not
            share = float(np.mean(np.round(got) == np.round(want)))
            row = {"agreement": share, "limit": self.discrete_agreement}
            ok = share >= self.discrete_agreement
            return row, [] if ok else [f"{key}: equal to {primary}'s on {100 * share:.3f}% of values < {100 * self.discrete_agreement:.2f}%"]
        diff = float(np.max(np.abs(got - want))) if got.size else 0.0
        row = {"max_abs_diff": diff, "tolerance": tol}
        fails = [] if diff <= tol else [f"{key}: max |OpenVINO - {primary}| = {diff:.3g} > {tol:.3g}"]
        if q is not None and got.size:  # to the step: a misread zero point moves every value one step
            row["exact_share"] = exact = float(np.mean(np.abs(got - want) <= 0.5 * q[0] + self.max_abs_diff))
            if exact < self.quantized_exact:
                fails.append(f"{key}: on the same quantization step as {primary} for {100 * exact:.2f}% of values < {100 * self.quantized_exact:.0f}%")
        if key == _ARRAY and want.ndim == 2 and len(want):
            picked = np.take_along_axis(want, got.argmax(-1)[:, None], -1)[:, 0]
            row["top1_agreement"] = agree = float(np.mean(np.abs(picked - want.max(-1)) <= tol))
            if agree < self.agreement:
                fails.append(f"top-1 agreement with {primary} {100 * agree:.2f}% < {100 * self.agreement:.2f}%")
        return row, fails


def _done(result: dict[str, Any]) -> dict[str, Any]:
    return {**result, "summary": summary(result)}


def summary(result: dict[str, Any]) -> str:
    """One line for the log and verification.md."""
    if result.get("unsupported"):
        return f"not compared: {result['unsupported']}"
    parts = [f"{result.get('checked', 0)} images vs {result.get('compared_with', '?')}"]
    diff, agree = result.get("max_abs_diff"), result.get("top1_agreement")
    if diff is not None and math.isfinite(diff):
        parts.append(f"max |diff| {diff:.2e}")
    if agree is not None:
        parts.append(f"top-1 agreement {100 * agree:.2f}%")
    verdict = "agrees" if result.get("passed") else "DISAGREES (a warning): " + "; ".join(result.get("warnings") or [])
    return ", ".join(parts) + f" -> {verdict}"
