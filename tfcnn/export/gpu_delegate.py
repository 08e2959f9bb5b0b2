"""Can LiteRT's GPU delegate run a .tflite file? ``tf.lite.experimental.Analyzer``'s answer, and
whether that answer means anything.

An Android app picks its delegate per file: XNNPACK on the CPU runs every builtin op; the GPU
delegate runs only the ops it has kernels for and leaves the rest to the CPU, one copy across
the boundary each time. TensorFlow's analyzer (``gpu_compatibility=True``) checks each op against
the delegate's rules and prints a ``GPU COMPATIBILITY WARNING`` per incompatible op; it *prints*
(a Python ``print`` of the report its C++ builds), so :func:`analyzer_text` captures both
Python's ``sys.stdout`` and file descriptor 1. The export runs :func:`analyze` in its native
child process (:mod:`tfcnn.export.isolate`), like the converters.

The analyzer of TensorFlow 2.21 (and of ai-edge-litert 2.3, the same code) calls every model
compatible: the per-op checks and their warning texts are not in its binary, and it passes even
the ``FlexCosh`` example its own guide shows as incompatible, as well as NON_MAX_SUPPRESSION_V4,
UNIQUE and WHERE, which the GPU delegate has no kernels for. So every analysis first runs that
guide example (:func:`analyzer_works`, once per process): when the analyzer does not flag it, the
entry records ``compatible: None`` with the analyzer's verdict beside it and why it is not
evidence, instead of a "compatible" nobody checked. The ops of the file are listed either way,
so a reader can compare them with the delegate's documented op list.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

ANALYZER = "tf.lite.experimental.Analyzer.analyze(gpu_compatibility=True)"
_OP = re.compile(r"^\s*Op#(\d+) ([A-Za-z0-9_]+)\(")
_WARNING = "GPU COMPATIBILITY WARNING:"
_COMPATIBLE = re.compile(r"looks compatib\w* with GPU delegate", re.I)
_INCOMPATIBLE = re.compile(r"has GPU delegate compatibility issues", re.I)
PROBE_OP = "FlexCosh"  # the analyzer guide's example of an op no GPU delegate runs


@contextlib.contextmanager
def _stdout_captured() -> Iterator[list[str]]:
    """Everything written to Python's stdout and to file descriptor 1 inside the block
    (the list holds one string once the block has ended)."""
    out: list[str] = []
    sys.stdout.flush()
    saved = os.dup(1)
    py = io.StringIO()
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            with contextlib.redirect_stdout(py):
                yield out
        finally:
            try:
                import ctypes

                ctypes.CDLL(None).fflush(None)  # C stdio buffers, before fd 1 goes back
            except (OSError, AttributeError):  # pragma: no cover - no libc handle (not Linux/macOS)
                pass
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            out.append(py.getvalue() + tmp.read().decode("utf-8", "replace"))


def analyzer_text(model: bytes) -> str:
    """The analyzer's report of ``model`` (flatbuffer bytes) with the GPU check on."""
    import tensorflow as tf

    with _stdout_captured() as out:
        tf.lite.experimental.Analyzer.analyze(model_content=bytes(model), gpu_compatibility=True)
    return out[0]


def parse(text: str) -> dict[str, Any]:
    """Ops, incompatible ops (each with the analyzer's reason) and the verdict of one report.

    ``verdict``: "compatible", "incompatible", or None when the report holds neither sentence
    (a changed format: then nothing is claimed)."""
    ops: list[str] = []
    incompatible: list[dict[str, Any]] = []
    last: tuple[int, str] | None = None
    for line in text.splitlines():
        m = _OP.match(line)
        if m:
            last = (int(m.group(1)), m.group(2))
            ops.append(m.group(2))
        elif line.strip().startswith(_WARNING) and last is not None and "Subgraph#" not in line:
            incompatible.append({"index": last[0], "op": last[1], "reason": line.strip()[len(_WARNING):].strip()})
    verdict = "incompatible" if _INCOMPATIBLE.search(text) or incompatible else "compatible" if _COMPATIBLE.search(text) else None
    return {"ops": ops, "incompatible": incompatible, "verdict": verdict}


@functools.lru_cache(maxsize=1)
def analyzer_works() -> tuple[bool, str]:
    """(does the analyzer flag its own guide's incompatible example, what it said): run once per process."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([4, 4], tf.float32)])
    def probe(x):
        return tf.cosh(x) + tf.slice(x, [1, 1], [1, 1])

    converter = tf.lite.TFLiteConverter.from_concrete_functions([probe.get_concrete_function()], probe)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    got = parse(analyzer_text(converter.convert()))
    flagged = any(i["op"] == PROBE_OP for i in got["incompatible"])
    return flagged, f"it calls {PROBE_OP} (its guide's example of a GPU-incompatible op) {got['verdict'] or 'nothing'}"


def analyze(path: str | Path) -> dict[str, Any]:
    """The ``gpu_delegate`` entry of one .tflite file (contract.json and the model card)."""
    import tensorflow as tf

    got = parse(analyzer_text(Path(path).read_bytes()))
    works, probe = analyzer_works()
    entry: dict[str, Any] = {
        "checked_by": f"{ANALYZER}, TensorFlow {tf.__version__}",
        "ops": sorted(set(got["ops"])),
        "analyzer_verdict": got["verdict"],
    }
    if got["verdict"] is None:
        return {**entry, "compatible": None, "incompatible_ops": None,
                "not_evidence": "the analyzer's report holds no GPU verdict (its format changed?)"}
    if not works:
        return {**entry, "compatible": None, "incompatible_ops": None,
                "not_evidence": f"this analyzer's GPU check is inoperative: {probe}, so its verdict proves nothing"}
    ops = [{"index": i["index"], "op": i["op"], "reason": i["reason"]} for i in got["incompatible"]]
    return {**entry, "compatible": got["verdict"] == "compatible", "incompatible_ops": ops}


def describe(entry: dict[str, Any] | None) -> str:
    """One line for the model card and the report."""
    if not entry:
        return "not analyzed (exported before tfcnn recorded it)"
    ops = ", ".join(entry.get("ops") or []) or "none"
    if entry.get("compatible") is None:
        return f"unknown: {entry.get('not_evidence')} (ops: {ops})"
    if entry["compatible"]:
        return f"compatible per the analyzer (ops: {ops})"
    bad = ", ".join(f"#{o['index']} {o['op']}" for o in entry.get("incompatible_ops") or [])
    return f"NOT fully compatible: {bad} run on the CPU (ops: {ops})"


def entry_for(ctx: Any, path: Path) -> dict[str, Any]:
    """:func:`analyze` in the export's native child process; an analyzer that fails or crashes is
    recorded as such (the entry informs the app author, it gates nothing)."""
    from tfcnn.errors import ExportError

    try:
        return ctx.call_native(analyze, str(path))
    except ExportError as exc:  # ConverterCrash included
        return {"checked_by": ANALYZER, "ops": [], "analyzer_verdict": None, "compatible": None, "incompatible_ops": None,
                "not_evidence": f"the analyzer failed: {exc}"}


def markdown(entries: dict[str, Any]) -> list[str]:
    """The model card's "GPU delegate" section: one row per TFLite file that carries an entry."""
    rows = [(e.get("file", fmt), e["gpu_delegate"]) for fmt, e in entries.items() if isinstance(e, dict) and "gpu_delegate" in e]
    if not rows:
        return []
    lines = ["", "## GPU delegate", "", f"What {ANALYZER} says of each TFLite file, and whether that is evidence.", "",
             "| file | GPU delegate | ops |", "|---|---|---|"]
    for file, e in rows:
        verdict = describe(e).split(" (ops: ")[0]
        lines.append(f"| `{file}` | {verdict} | {', '.join(e.get('ops') or []) or '-'} |")
    return lines
