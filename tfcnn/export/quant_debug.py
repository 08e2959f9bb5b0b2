"""Which layer of the full-integer model loses the signal: per-layer error against float.

An int8 model that agrees with Keras on 97% of images says nothing about *where* the other 3%
come from. TensorFlow's ``tf.lite.experimental.QuantizationDebugger`` instruments the quantized
model with NumericVerify ops: each quantized op is run beside its float twin fed with the *same
dequantized inputs*, so the error it reports is the one that layer adds (not the error carried in
from earlier layers). Per layer we keep, over a few dozen test images:

* ``snr_db``: 10 log10(sum f^2 / sum (f - dq)^2), f the float op's output and dq the quantized
  output dequantized (None when the two are identical);
* ``cosine``: the cosine similarity of f and dq (1 = same direction);
* ``rmse_over_scale``: RMS error in quantization steps; uniform rounding gives about 0.29, much
  more means clipping (a calibration range too narrow) or a kernel that re-quantizes coarsely.

It runs at export (the converter is native code, so in the export's child process) from the same
calibration as the published file, and the result is written beside it
(``tflite/model_int8.quant_debug.json``) and summarised in contract.json / the model card; verify
reads it back, checks it, and shows the worst layers. Whether the instrumented model's per-layer
scales equal the published file's is checked by tensor name and recorded (``matches_published``).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tfcnn.errors import ExportError, TfcnnError

SCHEMA = "tfcnn.quant_debug/1"
METHOD = (
    "tf.lite.experimental.QuantizationDebugger: each quantized op against its float op on the same "
    "dequantized inputs (layer-wise error)"
)
IMAGES = 32  # a few dozen: the instrumented model runs on TensorFlow's interpreter, op by op
WORST = 5  # layers shown in the contract, the card, verification.md and the report
SUFFIX = ".quant_debug.json"


def sidecar(tflite_rel: str) -> str:
    """The analysis file's path (relative to the version) beside the TFLite file it describes."""
    return tflite_rel.removesuffix(".tflite") + SUFFIX


def _dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float64) - zero_point) * scale


def _signal(f: np.ndarray, q: np.ndarray, scale: float, zero_point: int) -> float:
    return float(np.sum(np.square(f.astype(np.float64))))


def _noise(f: np.ndarray, q: np.ndarray, scale: float, zero_point: int) -> float:
    return float(np.sum(np.square(f.astype(np.float64) - _dequantize(q, scale, zero_point))))


def _cosine(f: np.ndarray, q: np.ndarray, scale: float, zero_point: int) -> float:
    a, b = f.astype(np.float64).ravel(), _dequantize(q, scale, zero_point).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0  # both all-zero (e.g. a ReLU that is off for this image): identical
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


# The debugger averages each metric over the images (nanmean); SNR is then the ratio of the mean
# signal and noise energies, i.e. of their sums, not an average of per-image ratios.
_METRICS = {"signal_energy": _signal, "noise_energy": _noise, "cosine": _cosine}


def analyse(
    source: Path, representative: np.ndarray, images: np.ndarray, float_names: tuple[str, ...] | None, published: bytes,
    keep_float: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Per-layer error of full-integer int8 (run it with ``ctx.call_native``: the converter is native).

    ``source``: the float32-input archive the int8 file was converted from; ``representative``:
    the same calibration images; ``images``: the float32 RGB images (0..255) to measure on;
    ``float_names``: the task's tensors kept float (as :func:`tfcnn.export.tflite.convert`);
    ``published``: the int8 file's bytes, whose scales the instrumented model's are compared with;
    ``keep_float``: ``export.int8_keep_float`` (those layers stay float here too).
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert

    from tfcnn.export import tflite as tflite_mod

    if len(images) == 0:
        raise ExportError("no image to measure the per-layer quantization error on")
    calibrated = tflite_mod.calibrated_model(source, representative)
    tail = None if float_names is None else tuple(float_names)
    # the published file's split: the task's tail, export.int8_keep_float and what XNNPACK refused
    _, denied, _ = tflite_mod.loadable_quantization(calibrated, tail, tuple(keep_float), tf.float32 if tail is not None else tf.uint8)
    keep = denied or None
    debug_model = tflite_convert.mlir_quantize(calibrated, enable_numeric_verify=True, denylisted_nodes=keep)

    def dataset() -> Iterator[list[np.ndarray]]:
        for img in images:
            yield [np.asarray(img, np.float32)[None]]

    options = tf.lite.experimental.QuantizationDebugOptions(layer_direct_compare_metrics=_METRICS, denylisted_nodes=keep)
    with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation and preserve-all-tensors notices
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=debug_model, debug_dataset=dataset, debug_options=options
        )
        debugger.run()
        dump = io.StringIO()
        debugger.layer_statistics_dump(dump)
    layers = [_layer(row) for row in csv.DictReader(io.StringIO(dump.getvalue()))]
    if not layers:
        raise ExportError("the instrumented int8 model has no quantized layer to measure")
    matched = _match_published(layers, published)
    return {
        "schema": SCHEMA,
        "method": METHOD,
        "images": int(len(images)),
        "matches_published": matched,
        "layers": layers,
        "worst": worst([l for l in layers if not l.get("unmeasurable")]),
    }


def _finite(value: str) -> float | None:
    """A debugger statistic, None when it is NaN / inf (a metric the debugger could not compute,
    e.g. its nanmean over images that all gave NaN): the analysis file stays valid JSON, and the
    reader fails a layer whose cosine or SNR is missing instead of comparing NaN."""
    v = float(value)
    return v if math.isfinite(v) else None


def _layer(row: dict[str, str]) -> dict[str, Any]:
    signal, noise = float(row["signal_energy"]), float(row["noise_energy"])
    cosine, max_abs = _finite(row["cosine"]), _finite(row["max_abs_error"])
    # The float op's own output is not finite (e.g. a probabilities -> logits Log of a 0): no SNR
    # exists to measure; recorded as such, and not held against the file (its outputs are checked
    # against Keras by verify anyway).
    unmeasurable = None if math.isfinite(signal) else "the float output is not finite (e.g. the log of a 0 probability)"
    scale = float(row["scale"])
    mse = float(row["mean_squared_error"])
    snr = 10.0 * math.log10(signal / noise) if noise > 0 and signal > 0 else None
    return {
        "op": row["op_name"],
        "tensor": row["tensor_name"],
        "snr_db": None if snr is None else round(snr, 3),
        "exact": noise == 0.0,
        "cosine": None if cosine is None else round(cosine, 6),
        "rmse_over_scale": round(math.sqrt(mse) / scale, 4) if scale > 0 and math.isfinite(mse) else None,
        "max_abs_error": max_abs,
        "scale": scale,
        "zero_point": int(float(row["zero_point"])),
        **({"unmeasurable": unmeasurable} if unmeasurable else {}),
    }


def worst(layers: list[dict[str, Any]], n: int = WORST) -> list[dict[str, Any]]:
    """The n layers with the lowest SNR (an exact layer last), each with its rank in the graph."""
    ranked = sorted(enumerate(layers), key=lambda il: (il[1]["snr_db"] is None, il[1]["snr_db"] or 0.0, -2.0 if il[1]["cosine"] is None else il[1]["cosine"]))
    return [{"index": i, **{k: l[k] for k in ("op", "tensor", "snr_db", "cosine", "rmse_over_scale")}} for i, l in ranked[:n]]


def _match_published(layers: list[dict[str, Any]], published: bytes) -> dict[str, Any]:
    """How many measured layers have, in the published file, a tensor of the same name with the
    same scale and zero point (the instrumented model is a re-quantization of the same
    calibration; fully quantizing the interface can move the scales of the layers next to it)."""
    from tfcnn.export.tflite import interpreter

    found: dict[str, list[tuple[float, int]]] = {}
    for d in interpreter(published).get_tensor_details():
        scale, zero = d["quantization"]
        if scale:
            found.setdefault(d["name"], []).append((float(scale), int(zero)))

    def same_as_published(layer: dict[str, Any]) -> bool:
        # The debugger's CSV prints a scale with float32's ~8 significant digits (0.0140662035
        # for 0.014066203497...): equal means within 1e-6 relative, the zero point exactly.
        return any(math.isclose(layer["scale"], s, rel_tol=1e-6) and layer["zero_point"] == z for s, z in found.get(layer["tensor"], []))

    same = [l["tensor"] for l in layers if same_as_published(l)]
    return {"layers": len(layers), "same_scale": len(same), "differing": [l["tensor"] for l in layers if l["tensor"] not in same][:10]}


def read_summary(version_dir: Path, entry: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """verify's view of a variant's analysis: (what verification.json shows, failure lines).

    The analysis file is part of the version (hashed in the card); one that is missing, recorded
    an error, or holds a NaN fails, as a check that could not check."""
    from tfcnn.util import read_json

    meta = entry.get("quant_debug") or {}
    rel = meta.get("file")
    if meta.get("error"):
        return {"file": rel, "error": meta["error"]}, [f"per-layer quantization analysis failed at export: {meta['error']}"]
    path = Path(version_dir) / str(rel)
    if not rel or not path.is_file():
        return {"file": rel}, [f"per-layer quantization analysis {rel} is missing; re-export"]
    try:
        data = read_json(path)
    except TfcnnError as exc:  # a corrupt file is a failure line, not a crash
        return {"file": rel}, [f"{rel}: unreadable ({exc})"]
    layers = data.get("layers") or []
    if data.get("schema") != SCHEMA or not layers:
        return {"file": rel}, [f"{rel}: not a {SCHEMA} analysis with layers; re-export"]
    nan = [l["tensor"] for l in layers if not l.get("unmeasurable") and (
           l.get("cosine") is None or not math.isfinite(float(l["cosine"])) or (l.get("snr_db") is None and not l.get("exact")))]
    summary = {
        "file": rel,
        "method": data.get("method"),
        "images": data.get("images"),
        "measured_on": data.get("measured_on"),
        "layers": len(layers),
        "matches_published": data.get("matches_published"),
        "worst": worst([l for l in layers if not l.get("unmeasurable")]),
        "unmeasurable": [l["tensor"] for l in layers if l.get("unmeasurable")],
    }
    return summary, ([f"{rel}: no finite SNR / cosine for {', '.join(nan[:3])}"] if nan else [])


def markdown_lines(report: dict[str, Any]) -> list[str]:
    """verification.md's section: the worst layers of each format that carries an analysis."""
    lines: list[str] = []
    for fmt, row in report.get("formats", {}).items():
        qd = row.get("quant_debug")
        if not qd:
            continue
        lines += ["", f"## Per-layer quantization error of {fmt}", ""]
        if not qd.get("worst"):
            lines.append(f"Not available: {qd.get('error') or 'the analysis file is missing or unreadable'}.")
            continue
        match = qd.get("matches_published") or {}
        lines.append(
            f"{qd['method']}; measured on {qd.get('measured_on') or str(qd['images']) + ' images'}, {qd['layers']} quantized layers "
            f"({match.get('same_scale', '?')} with the published file's exact scale). Lowest SNR first:"
        )
        lines += ["", "| layer | op | tensor | SNR dB | cosine | RMSE / scale |", "|---:|---|---|---:|---:|---:|"]
        for w in qd["worst"]:
            snr = "exact" if w["snr_db"] is None else f"{w['snr_db']:.1f}"
            rs = "-" if w["rmse_over_scale"] is None else f"{w['rmse_over_scale']:.3f}"
            lines.append(f"| {w['index']} | {w['op']} | `{w['tensor'].split(';')[0]}` | {snr} | {'n/a' if w['cosine'] is None else format(w['cosine'], '.5f')} | {rs} |")
    return lines


def measurement_images(ctx: Any, calibration: np.ndarray) -> tuple[np.ndarray, str]:
    """The first :data:`IMAGES` test images (float32 RGB 0..255), or, without a test split, the
    first calibration images (said in the record: their ranges were fitted on them)."""
    from tfcnn.export.source import bundle_of
    from tfcnn.export.wrapper import to_rgb

    x_test = bundle_of(ctx.run).arrays["test"][0][:IMAGES]
    g = ctx.geometry
    if len(x_test) and tuple(x_test.shape[1:3]) == (g.height, g.width):
        return to_rgb(x_test).astype(np.float32), f"the first {len(x_test)} images of the test split"
    return calibration[:IMAGES], f"the first {min(IMAGES, len(calibration))} calibration (training) images"


def write_analysis(ctx: Any, source: Path, calibration: np.ndarray, published: bytes, tflite_rel: str) -> dict[str, Any]:
    """Run :func:`analyse` in the export's native child, write it beside the TFLite file, and
    return the contract entry's summary. A failure is recorded (verify then fails on it), not
    raised: the int8 file itself is fine, its analysis is what is missing."""
    from tfcnn.util import finite, log, write_json

    rel = sidecar(tflite_rel)
    images, where = measurement_images(ctx, calibration)
    try:
        result = ctx.call_native(analyse, source, calibration, images, ctx.task.int8_float_names, published,
                                 tuple(ctx.ecfg.int8_keep_float))
    except ExportError as exc:
        log.info("export: per-layer quantization analysis failed: %s", exc)
        result = {"schema": SCHEMA, "method": METHOD, "error": str(exc)}
    result["measured_on"] = where
    result = finite(result)  # NaN / inf debugger statistics as null: the reader fails a layer missing its cosine or SNR
    write_json(ctx.out / rel, result)
    summary = {"file": rel, "method": METHOD, "images": result.get("images"), "measured_on": where}
    if "error" in result:
        return {**summary, "error": result["error"]}
    return {**summary, "matches_published": result["matches_published"], "worst": result["worst"]}


def calibration_record(ctx: Any) -> dict[str, Any]:
    """How the calibrated variants were calibrated, for the model card."""
    rep = ctx.prerequisites.get("representative")
    return {
        "split": "train",
        "images": None if rep is None else int(len(rep) - 1),
        "range_pin_images": 1,  # a copy of one image with a 0 and a 255 pixel (tflite.representative_images)
        "draw": f"seeded without replacement (data.seed {ctx.cfg.data.seed})",
        "requested": ctx.ecfg.representative_samples,
    }
