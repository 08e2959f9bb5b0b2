"""Verify's second runtime and honest clients: OpenVINO re-runs every file verify ran and is compared
with that file's own runtime; MediaPipe runs on the whole test split; a client that cannot be
imported fails verification unless the user skipped it. One verified copy of the shared tiny export."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tfcnn.errors import ConfigError, VerificationError


def _copy(version_dir: Path, dest: Path) -> Path:
    """A private copy of a version with its model directory (models.config lies beside the versions)."""
    shutil.copytree(version_dir.parent, dest / version_dir.parent.name)
    return dest / version_dir.parent.name / version_dir.name


@pytest.fixture(scope="module")
def verified(tiny_version, tmp_path_factory):
    """(version dir, report) of a private copy of the tiny export, verified."""
    from tfcnn.export import verify_version

    vd = _copy(tiny_version, tmp_path_factory.mktemp("ov"))
    return vd, verify_version(vd)


@pytest.fixture(scope="module")
def test_images(verified):
    from tfcnn.export.source import bundle_of, load_source
    from tfcnn.export.wrapper import to_rgb

    vd, _ = verified
    card = json.loads((vd / "model_card.json").read_text())
    x, _ = bundle_of(load_source(Path(card["source"]["run_dir"])).run).arrays["test"]
    return np.ascontiguousarray(to_rgb(x[:24]))


def test_openvino_agrees_with_each_files_own_runtime(verified):
    vd, report = verified
    ov = report["openvino"]
    assert sorted(ov) == sorted(report["formats"])  # every format of the version, none passed silently
    for fmt, m in ov.items():
        assert m["passed"] is True, (fmt, m)
        assert m["checked"] == report["samples"] and m["precision"] == "f32" and m["low_precision_transforms"] == "off"
        assert m["top1_agreement"] == 1.0 and m["max_abs_diff"] <= m["outputs"]["probabilities"]["tolerance"]
    # the full-integer file: OpenVINO runs its quantization as LiteRT does, to the step
    step = next(o["quantization"]["scale"] for o in json.loads((vd / "contract.json").read_text())["artifacts"]["tflite_int8"]["outputs"])
    assert ov["tflite_int8"]["max_abs_diff"] <= step + 1e-9
    assert ov["savedmodel"]["frontend"] == "tf" and ov["onnx"]["frontend"] == "onnx" and ov["tflite_float32"]["frontend"] == "tflite"
    md = (vd / "verification.md").read_text()
    assert "## Cross-check: openvino" in md and "tflite_int8: " in md.split("## Cross-check: openvino")[1]
    assert not report["warnings"]
    from tfcnn.vis.report import _cross_checks

    html = _cross_checks(json.loads((vd / "model_card.json").read_text()), report)
    assert "Cross-check: the same files in openvino" in html and "tflite/model_int8.tflite" in html  # and the GPU record


def test_mediapipe_runs_on_the_whole_test_split(verified):
    _, report = verified
    for variant in ("tflite_float32", "tflite_int8"):
        assert report["mediapipe"][variant]["checked"] == report["samples"] > 0


def test_a_disagreement_is_a_warning_with_the_numbers(verified, test_images):
    """OpenVINO against outputs the file does not produce: each broken limit is named."""
    from tfcnn.export.formats.tflite import LiteRTFileRunner
    from tfcnn.export.openvino_check import OpenVINOCheck

    vd, _ = verified
    entry = json.loads((vd / "contract.json").read_text())["artifacts"]["tflite_float32"]
    probs = LiteRTFileRunner(vd, entry, 1).predict(test_images)
    check = OpenVINOCheck("tflite", max_abs_diff=1e-5)
    assert check(vd / entry["file"], test_images, probs, [])["passed"] is True
    moved = probs[:, ::-1].copy()  # the classes reversed: every top-1 moves
    got = check(vd / entry["file"], test_images, moved, [])
    assert got["passed"] is False and "failures" not in got
    assert any("max |OpenVINO - LiteRT|" in w for w in got["warnings"]) and any("top-1 agreement" in w for w in got["warnings"])
    assert got["top1_agreement"] < 1.0 and "DISAGREES" in got["summary"]


def test_compare_rules_for_discrete_float_and_non_finite_outputs():
    from tfcnn.export.openvino_check import OpenVINOCheck

    check = OpenVINOCheck("savedmodel", max_abs_diff=1e-3, discrete_agreement=0.75)
    mask = np.array([[0, 1], [2, 3]])
    row, fails = check._compare("mask", mask.copy(), mask.copy(), None)
    assert row["agreement"] == 1.0 and not fails
    row, fails = check._compare("mask", np.array([[0, 1], [2, 0]]), mask, None)
    assert row["agreement"] == 0.75 and not fails  # at the limit
    row, fails = check._compare("mask", np.array([[1, 1], [2, 0]]), mask, None)
    assert row["agreement"] == 0.5 and "equal to TensorFlow's on 50.000%" in fails[0]
    flag_q = (np.array([255, 0]), np.array([1.0, 0.0]), (1 / 255, 0))  # a dequantized 0/1 flag is discrete too
    row, fails = check._compare("flag", *flag_q)
    assert row == {"agreement": 1.0, "limit": 0.75} and not fails
    _, fails = check._compare("score", np.array([0.5, np.nan]), np.array([0.5, 0.2]), None)
    assert fails == ["score: OpenVINO returns 1 non-finite values"]
    _, fails = check._compare("score", np.array([0.5, 0.2]), np.array([0.5, 0.2021]), None)
    assert "max |OpenVINO - TensorFlow| = 0.0021 > 0.001" in fails[0]
    _, fails = check._compare("score", np.zeros(3), np.zeros(2), None)
    assert "shape [3]" in fails[0]


def test_a_file_openvino_cannot_read_is_reported_not_passed(tmp_path, test_images):
    from tfcnn.export.openvino_check import OpenVINOCheck, version

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07" + b"not an onnx graph" * 8)
    got = OpenVINOCheck("onnx")(bad, test_images, np.zeros((len(test_images), 3), np.float32), [])
    assert got["passed"] is None and got["unsupported"].startswith(f"OpenVINO {version()} cannot read or run model.onnx: ")
    assert "\n" not in got["unsupported"] and got["summary"].startswith("not compared: ")


def test_openvino_import_does_not_phone_home():
    """Importing openvino would send a Google Analytics event; tfcnn's import blocks its telemetry."""
    from tfcnn.export.openvino_check import import_openvino

    import_openvino()
    assert sys.modules.get("openvino_telemetry") is None


def test_unimportable_clients_fail_verify_with_one_line_each_unless_skipped(verified, tmp_path, monkeypatch, capsys):
    from tfcnn.cli import main
    from tfcnn.export import verify_version

    vd = _copy(verified[0], tmp_path)
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # "import mediapipe" raises ImportError
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(VerificationError):
        verify_version(vd, samples=8)
    report = json.loads((vd / "verification.json").read_text())
    for client, fmts in (("mediapipe", ["tflite_float32", "tflite_int8"]), ("openvino", sorted(report["formats"]))):
        lines = [f for f in report["failures"] if f.startswith(f"{client} ")]
        assert len(lines) == len(fmts), lines
        for line in lines:
            assert f"{client} is not importable (ModuleNotFoundError" in line and f"--skip-{client}" in line and "\n" not in line
    assert report["passed"] is False and all(r["passed"] for r in report["formats"].values())  # only the clients failed

    code = main(["verify", str(vd), "--samples", "8", "--skip-mediapipe", "--skip-openvino"])
    capsys.readouterr()
    report = json.loads((vd / "verification.json").read_text())
    assert code == 0 and report["passed"] is True
    assert report["mediapipe"]["tflite_int8"] == {"passed": None, "skipped": "by the user (--skip-mediapipe)"}
    assert report["openvino"]["onnx"] == {"passed": None, "skipped": "by the user (--skip-openvino)"}
    assert "tflite_float32: skipped (by the user (--skip-openvino))" in (vd / "verification.md").read_text()


def test_skip_names_are_checked_before_any_work(tmp_path):
    from tfcnn.config import from_dict
    from tfcnn.export import verify_version
    from tfcnn.pipeline import validate

    validate(from_dict({"export": {"skip_clients": ["mediapipe", "openvino"]}}))
    with pytest.raises(ConfigError, match=r"export.skip_clients: 'mediapip' is not a client check; choose from mediapipe, openvino"):
        validate(from_dict({"export": {"skip_clients": ["mediapip"]}}))
    (tmp_path / "model_card.json").write_text(json.dumps({"artifacts": [], "source": {"run_dir": str(tmp_path)}}))
    with pytest.raises(VerificationError, match="cannot skip client 'onnxruntime'"):
        verify_version(tmp_path, skip_clients=["onnxruntime"])


def test_skip_flags_reach_verify_from_every_command(monkeypatch, tmp_path):
    """--skip-<client> on verify, export --verify and run; run passes it through the pipeline."""
    from tfcnn.cli import _parser, _skips
    from tfcnn.config import from_dict
    from tfcnn.pipeline import export_stage

    p = _parser()
    for argv in (["verify", "v", "--skip-mediapipe"], ["export", "r", "--verify", "--skip-mediapipe"], ["run", "p.toml", "--skip-mediapipe"]):
        assert _skips(p.parse_args(argv)) == {"mediapipe": "by the user (--skip-mediapipe)"}
    assert _skips(p.parse_args(["verify", "v"])) == {}
    seen = {}
    monkeypatch.setattr("tfcnn.export.exporter.export_run", lambda run, **kw: tmp_path)
    monkeypatch.setattr("tfcnn.export.verify.verify_version", lambda vd, **kw: seen.update(kw) or {"passed": True})
    export_stage(from_dict({}), tmp_path, {"openvino": "by the user (--skip-openvino)"})
    assert seen["skip_clients"] == {"openvino": "by the user (--skip-openvino)"}


def test_a_crash_of_openvino_is_one_line_not_a_dead_verify(verified, test_images, monkeypatch):
    """OpenVINO runs in the native child: its death there (here simulated) is a "not compared" line."""
    from tfcnn.export import isolate
    from tfcnn.export.openvino_check import OpenVINOCheck

    class Crashing:
        def call(self, fn, *args, **kwargs):
            raise isolate.ConverterCrash("crashed (signal 11, SIGSEGV) in the converter's child process")

    monkeypatch.setattr(isolate, "shared_worker", lambda: Crashing())
    vd, _ = verified
    got = OpenVINOCheck("onnx")(vd / "onnx" / "model.onnx", test_images, np.zeros((len(test_images), 3), np.float32), [])
    assert got["passed"] is None
    assert got["unsupported"].endswith("model.onnx: crashed (signal 11, SIGSEGV) in OpenVINO's child process")
