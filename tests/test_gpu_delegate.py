"""The GPU-delegate record of each TFLite file: tf.lite.experimental.Analyzer's verdict, parsed from
its printed report, and given as evidence only when the analyzer flags its own guide's
incompatible example. Uses the shared tiny export; the parser is tested on the report format of
TensorFlow's model_analyzer.cc."""

from __future__ import annotations

import ctypes
import json
import os

import pytest

# The layout model_analyzer.cc prints when its GPU check works (TensorFlow <= 2.20 wording).
WORKING_REPORT = """=== TFLite ModelAnalyzer ===

Subgraph#0 main(T#0) -> [T#4]
  Op#0 FlexCosh(T#0) -> [T#2]
GPU COMPATIBILITY WARNING: Not supported custom op FlexCosh
  Op#1 SLICE(T#0, T#1[1, 1], T#1[1, 1]) -> [T#3]
  Op#2 ADD(T#2, T#3) -> [T#4]

GPU COMPATIBILITY WARNING: Subgraph#0 has GPU delegate compatibility issues at nodes 0 with TFLite runtime version 2.11.0

Tensors of Subgraph#0
  T#0(x) shape:[4, 4], type:FLOAT32
"""
COMPATIBLE_REPORT = """Subgraph#0 main(T#0) -> [T#1]
  Op#0 CONV_2D(T#0, T#2, T#3) -> [T#1]

Your model looks compatible with GPU delegate on TFLite runtime version 2.21.0.
"""


def _file_ops(path) -> set[str]:
    """The ops of a .tflite file read with LiteRT's flatbuffer schema (independent of the analyzer)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = set()
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        ops.add(names[max(code.builtinCode, code.deprecatedBuiltinCode)])
    return ops


def test_parse_reads_each_incompatible_op_and_the_verdict():
    from tfcnn.export.gpu_delegate import parse

    got = parse(WORKING_REPORT)
    assert got["ops"] == ["FlexCosh", "SLICE", "ADD"] and got["verdict"] == "incompatible"
    assert got["incompatible"] == [{"index": 0, "op": "FlexCosh", "reason": "Not supported custom op FlexCosh"}]
    assert parse(COMPATIBLE_REPORT) == {"ops": ["CONV_2D"], "incompatible": [], "verdict": "compatible"}
    assert parse("Subgraph#0 main(T#0)\n  Op#0 ADD(T#0) -> [T#1]\n")["verdict"] is None  # neither sentence: no claim


def test_a_verdict_is_recorded_only_when_the_analyzer_can_tell(monkeypatch, tmp_path):
    from tfcnn.export import gpu_delegate

    model = tmp_path / "m.tflite"
    model.write_bytes(b"unused: the report is substituted")
    monkeypatch.setattr(gpu_delegate, "analyzer_text", lambda data: WORKING_REPORT)
    monkeypatch.setattr(gpu_delegate, "analyzer_works", lambda: (True, "it flags FlexCosh"))
    entry = gpu_delegate.analyze(model)
    assert entry["compatible"] is False and entry["incompatible_ops"][0]["op"] == "FlexCosh"
    assert gpu_delegate.describe(entry).startswith("NOT fully compatible: #0 FlexCosh run on the CPU")
    monkeypatch.setattr(gpu_delegate, "analyzer_text", lambda data: COMPATIBLE_REPORT)
    assert gpu_delegate.analyze(model)["compatible"] is True
    monkeypatch.setattr(gpu_delegate, "analyzer_works", lambda: (False, "it calls FlexCosh compatible"))
    entry = gpu_delegate.analyze(model)
    assert entry["compatible"] is None and entry["analyzer_verdict"] == "compatible"
    assert "it calls FlexCosh compatible" in entry["not_evidence"] and gpu_delegate.describe(entry).startswith("unknown: ")


def test_capture_gets_python_prints_and_native_writes():
    from tfcnn.export.gpu_delegate import _stdout_captured

    with _stdout_captured() as out:
        print("from python")
        os.write(1, b"from fd 1\n")
        ctypes.CDLL(None).printf(b"from C stdio\n")  # buffered in libc until the capture flushes it
    assert out[0].splitlines() == ["from python", "from fd 1", "from C stdio"]  # Python's first, then fd 1's


def test_every_tflite_file_of_an_export_carries_its_record(tiny_version):
    import tensorflow as tf

    from tfcnn.export.gpu_delegate import analyzer_works

    contract = json.loads((tiny_version / "contract.json").read_text())
    works, probe = analyzer_works()
    for fmt in ("tflite_float32", "tflite_int8"):
        entry = contract["artifacts"][fmt]
        gpu = entry["gpu_delegate"]
        assert set(gpu["ops"]) == _file_ops(tiny_version / entry["file"])  # the analyzer's ops are the file's
        assert gpu["checked_by"].endswith(f"TensorFlow {tf.__version__}")
        assert (gpu["compatible"] is None) == (not works) and gpu["analyzer_verdict"] in ("compatible", "incompatible")
        if not works:
            assert probe in gpu["not_evidence"]
    card_md = (tiny_version / "model_card.md").read_text()
    assert "## GPU delegate" in card_md and "`tflite/model_int8.tflite` |" in card_md.split("## GPU delegate")[1]


@pytest.mark.skipif(not __import__("tensorflow").__version__.startswith("2.21."), reason="the finding is about TensorFlow 2.21")
def test_tensorflow_2_21s_analyzer_passes_its_own_incompatible_example():
    """Why the records say "unknown": this analyzer calls FlexCosh (and NMS, UNIQUE, ...) GPU-compatible."""
    from tfcnn.export.gpu_delegate import analyzer_works

    works, probe = analyzer_works()
    assert works is False and probe == "it calls FlexCosh (its guide's example of a GPU-incompatible op) compatible"
