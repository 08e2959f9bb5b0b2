"""int8 you can debug: each TFLite file's recipe read back from its flatbuffer (a file named int8
that is really dynamic range fails verify), the opt-in int16x8 and weight-only int8 variants, the
full-integer model's per-layer error against float, and the calibration-size benchmark.

One export of the tiny run (four quantized variants) is shared by the tests.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tfcnn.errors import ConfigError, VerificationError

FORMATS = ["tflite_dynamic", "tflite_int8", "tflite_int16x8", "tflite_weight_only_int8"]
KINDS = {
    "tflite_dynamic": "dynamic_range",
    "tflite_int8": "full_integer_int8",
    "tflite_int16x8": "int16x8",
    "tflite_weight_only_int8": "weight_only_int8",
}


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """(version_dir, verification report) of the tiny run's four quantized variants."""
    from tfcnn.export import export_run, verify_version

    base = tmp_path_factory.mktemp("quant")
    run = base / "run"
    shutil.copytree(tiny_run, run)  # export_run records itself in the run dir; tiny_run stays read-only
    vd = export_run(run, formats=FORMATS, root=base / "repo")
    return vd, verify_version(vd)


def _contract(vd: Path) -> dict:
    return json.loads((vd / "contract.json").read_text())


def test_each_variant_is_what_its_name_says_and_is_verified(exported):
    from tfcnn.export.formats import check_formats, default_formats

    vd, report = exported
    entries = _contract(vd)["artifacts"]
    for fmt, kind in KINDS.items():
        r = entries[fmt]["recipe"]
        assert r["kind"] == kind and r["input_dtypes"] == ["uint8"], fmt
        assert report["formats"][fmt]["passed"] and report["formats"][fmt]["spec_checked"], fmt
    i8, i16, wo, dyn = (entries[f]["recipe"] for f in ("tflite_int8", "tflite_int16x8", "tflite_weight_only_int8", "tflite_dynamic"))
    assert i8["activation_dtypes"] == ["int8"] and i8["weight_granularity"] == "per-channel" and i8["output_dtypes"] == ["uint8"]
    assert i16["activation_dtypes"] == ["int16"] and i16["weight_dtypes"] == ["int8"] and i16["output_dtypes"] == ["float32"]
    assert i16["float_ops"] == [] and i16["execution"]["integer"] == i16["layers"] >= 3
    # weight-only: every weighted layer has int8 weights behind a DEQUANTIZE, float compute (no hybrid kernel)
    assert wo["execution"]["dequantized"] == wo["layers"] and wo["weight_dtypes"] == ["int8"] and wo["activation_dtypes"] == ["float32"]
    # dynamic range quantizes only the weights of >= 1024 elements (tiny_cnn's conv2), the rest stays float
    assert dyn["execution"]["hybrid"] >= 1 and all(w["elements"] < 1024 for w in dyn["float_weights"])
    assert report["formats"]["tflite_int16x8"]["agreement"] >= 0.99 and report["formats"]["tflite_weight_only_int8"]["agreement"] >= 0.99
    card = json.loads((vd / "model_card.json").read_text())
    assert card["contract"]["artifacts"]["tflite_int16x8"]["recipe"] == i16  # the card carries the same read-back
    assert card["export"]["calibration"]["split"] == "train" and card["export"]["calibration"]["images"] > 0
    md = (vd / "model_card.md").read_text()
    assert "## Quantization (read back from each file)" in md and "| tflite_int16x8 | int16x8 | int8 | per-channel | int16 |" in md
    # opt-in, and only for classifiers
    assert not {"tflite_int16x8", "tflite_weight_only_int8"} & set(default_formats())
    with pytest.raises(ConfigError, match="cannot export a detection model"):
        check_formats(["tflite_int16x8"], "detection", error=ConfigError)


def test_every_file_read_as_another_variant_is_refused(exported):
    """The recipe check tells each quantized file from every other one (it can fail)."""
    from tfcnn.export.tflite import ALL_VARIANTS, recipe, recipe_problems

    vd, _ = exported
    found = {fmt: recipe(vd / ALL_VARIANTS[fmt]) for fmt in FORMATS}
    for claimed in [*FORMATS, "tflite_float32", "tflite_float16"]:
        for actual in FORMATS:
            problems = recipe_problems(claimed, found[actual])
            assert bool(problems) == (claimed != actual), (claimed, actual, problems)


def test_a_file_named_int8_that_is_really_dynamic_range_fails_verify(exported, tmp_path):
    """An exporter bug that writes a dynamic-range file under the int8 name (hashes in order) runs
    and agrees with Keras, so only the read-back recipe can catch it."""
    from tfcnn.export import card as card_mod
    from tfcnn.export import verify_version
    from tfcnn.export.repository import write_card_hash
    from tfcnn.util import write_json

    src, _ = exported
    vd = tmp_path / "1"
    shutil.copytree(src, vd)
    (vd / "verification.json").unlink()
    (vd / "tflite/model_int8.tflite").write_bytes((vd / "tflite/model_dynamic.tflite").read_bytes())
    card = json.loads((vd / "model_card.json").read_text())
    card["artifacts"] = card_mod.manifest(vd)
    write_json(vd / "model_card.json", card)
    write_card_hash(vd)
    with pytest.raises(VerificationError, match="tflite_int8"):
        verify_version(vd, samples=30)
    row = json.loads((vd / "verification.json").read_text())["formats"]["tflite_int8"]
    assert row["agreement"] >= 0.985  # the numbers alone would have passed it
    text = " ".join(row["failures"])
    assert "the file is dynamic_range" in text and "promises full_integer_int8" in text
    assert "contract.json records a full_integer_int8 recipe" in text


def test_per_layer_error_of_the_full_integer_model(exported):
    from tfcnn.export.tflite import WEIGHTED_OPS

    vd, report = exported
    entry = _contract(vd)["artifacts"]["tflite_int8"]["quant_debug"]
    data = json.loads((vd / entry["file"]).read_text())
    assert entry["file"] == "tflite/model_int8.quant_debug.json" and data["measured_on"].startswith("the first 32 images of the test")
    assert any(row["path"] == entry["file"] and row["format"] == "tflite_int8" for row in json.loads((vd / "model_card.json").read_text())["artifacts"])
    layers = data["layers"]
    assert {l["op"] for l in layers} >= {"CONV_2D", "FULLY_CONNECTED"}
    assert all(0.99 < l["cosine"] <= 1.0 + 1e-9 and (l["snr_db"] is None or l["snr_db"] > 20) for l in layers)
    snrs = [w["snr_db"] for w in data["worst"] if w["snr_db"] is not None]
    assert snrs == sorted(snrs) and snrs[0] == min(l["snr_db"] for l in layers if l["snr_db"] is not None)
    # the instrumented model is quantized from the same calibration: its weighted layers' scales are the file's
    weighted = {l["tensor"] for l in layers if l["op"] in WEIGHTED_OPS}
    assert weighted and not weighted & set(data["matches_published"]["differing"])
    qd = report["formats"]["tflite_int8"]["quant_debug"]
    assert qd["worst"] == data["worst"] and qd["layers"] == len(layers)
    md = (vd / "verification.md").read_text()
    assert "## Per-layer quantization error of tflite_int8" in md and data["worst"][0]["tensor"].split(";")[0] in md
    from tfcnn.vis.report import _quantization  # the report's export section, from the same two files

    html = _quantization(json.loads((vd / "model_card.json").read_text()), report)
    assert "Per-layer quantization error of tflite_int8" in html and "<td>int16x8</td>" in html
    assert data["worst"][0]["tensor"].split(";")[0] in html


def test_int8_keep_float_keeps_the_named_layers_float_and_the_rest_integer(tiny_run, tmp_path):
    """export.int8_keep_float: the matching layer (tiny_cnn's first conv) runs in float inside the
    int8 file, every other weighted layer stays integer, the interface stays uint8 in and out, the
    per-layer analysis sees the same split, and verify passes; a pattern matching no tensor is one
    error line, and a pattern that is not a regular expression is refused before any work."""
    from tfcnn.config import from_dict
    from tfcnn.errors import ExportError
    from tfcnn.export import export_run, verify_version
    from tfcnn.pipeline import validate

    def export(keep: list[str], name: str) -> Path:
        run = tmp_path / name
        shutil.copytree(tiny_run, run)
        cfg = json.loads((run / "config.json").read_text())
        cfg["export"]["int8_keep_float"] = keep
        (run / "config.json").write_text(json.dumps(cfg))
        return export_run(run, formats=["tflite_int8"], root=tmp_path / f"{name}_repo")

    vd = export(["conv1"], "kept")
    recipe = _contract(vd)["artifacts"]["tflite_int8"]["recipe"]
    assert recipe["execution"]["float"] == 1 and recipe["execution"]["integer"] >= 2
    assert recipe["input_dtypes"] == ["uint8"] and recipe["output_dtypes"] == ["uint8"]
    layers = json.loads((vd / "tflite" / "model_int8.quant_debug.json").read_text())["layers"]
    assert layers and not any("conv1" in l["tensor"] for l in layers if l["op"] == "CONV_2D")
    report = verify_version(vd, skip_clients=["openvino", "mediapipe"])
    assert report["formats"]["tflite_int8"]["passed"], report["formats"]["tflite_int8"]["failures"]
    with pytest.raises(ExportError) as err:
        export(["no_such_layer"], "misspelt")
    assert "export.int8_keep_float" in str(err.value) and "'no_such_layer'" in str(err.value)
    assert not (tmp_path / "misspelt_repo" / "tiny" / "1").exists()  # nothing half-written
    with pytest.raises(ConfigError, match=r"export.int8_keep_float\[0\] = '\(' is not a regular expression"):
        validate(from_dict({"export": {"int8_keep_float": ["("]}}))


def test_published_scales_match_as_the_debugger_prints_them(exported):
    """The debugger's CSV has float32's ~8 significant digits: a layer printed that way matches its
    tensor in the published file (rounding both to 9 decimals once failed on 0.0140662035), while a
    scale 1e-4 off or another zero point does not."""
    from tfcnn.export.quant_debug import _match_published
    from tfcnn.export.tflite import interpreter

    vd, _ = exported
    published = (vd / "tflite" / "model_int8.tflite").read_bytes()
    rows = [d for d in interpreter(published).get_tensor_details() if d["quantization"][0]]
    printed = [{"tensor": d["name"], "scale": float(f"{d['quantization'][0]:.8g}"), "zero_point": int(d["quantization"][1])} for d in rows]
    assert _match_published(printed, published) == {"layers": len(rows), "same_scale": len(rows), "differing": []}
    off = [{**printed[0], "scale": printed[0]["scale"] * 1.0001}, {**printed[1], "zero_point": printed[1]["zero_point"] + 1}]
    assert _match_published(off, published)["differing"] == [printed[0]["tensor"], printed[1]["tensor"]]


def test_the_analysis_sees_a_calibration_that_clips(exported, tiny_run, tmp_path):
    """Calibrated on images at a tenth of their brightness, real images clip: the per-layer SNR
    must drop and the RMS error grow past a rounding step (the measurement is not a constant)."""
    import tensorflow as tf

    from tfcnn.export import quant_debug
    from tfcnn.export.source import bundle_of, load_source
    from tfcnn.export.tflite import ALL_VARIANTS, representative_images
    from tfcnn.export.wrapper import mobile_archive, to_rgb
    from tfcnn.tasks import get_task

    vd, _ = exported
    src = load_source(tiny_run)
    arrays = bundle_of(src.run).arrays
    source = tmp_path / "mobile_float32"
    mobile_archive(src.load_model(), tf.float32, get_task("classification")).write_out(str(source), verbose=False)
    images = to_rgb(arrays["test"][0][:8]).astype(np.float32)
    rep = representative_images(arrays["train"][0], 32, 0)
    dim = rep * 0.1
    dim[-1, 0, 0, :], dim[-1, -1, -1, :] = 0.0, 255.0  # the input's range pin stays: only the activations are off
    published = (vd / ALL_VARIANTS["tflite_int8"]).read_bytes()
    good = quant_debug.analyse(source, rep, images, None, published)
    bad = quant_debug.analyse(source, dim, images, None, published)

    def low(r: dict) -> float:
        return min(l["snr_db"] for l in r["layers"] if l["snr_db"] is not None)

    assert low(bad) < low(good) - 6.0, (low(good), low(bad))
    assert max(l["rmse_over_scale"] for l in bad["layers"]) > 1.0 > max(l["rmse_over_scale"] for l in good["layers"])


def test_analysis_summary_fails_when_it_cannot_check(tmp_path):
    from tfcnn.export.quant_debug import SCHEMA, read_summary

    layer = {"op": "CONV_2D", "tensor": "conv", "snr_db": 40.0, "exact": False, "cosine": 0.999, "rmse_over_scale": 0.3}
    (tmp_path / "ok.json").write_text(json.dumps({"schema": SCHEMA, "method": "m", "images": 2, "layers": [layer]}))
    summary, problems = read_summary(tmp_path, {"quant_debug": {"file": "ok.json"}})
    assert not problems and summary["worst"][0]["tensor"] == "conv"
    (tmp_path / "nan.json").write_text(json.dumps({"schema": SCHEMA, "layers": [{**layer, "snr_db": None, "cosine": float("nan")}]}))
    for entry, why in [
        ({"file": "nan.json"}, "no finite SNR"),
        ({"file": "gone.json"}, "missing"),
        ({"file": "ok.json", "error": "converter crashed"}, "failed at export: converter crashed"),
    ]:
        _, problems = read_summary(tmp_path, {"quant_debug": entry})
        assert problems and why in problems[0], (entry, problems)


def test_calibration_bench_reports_accuracy_per_calibration_size(tiny_run, capsys, monkeypatch):
    """bench/calibration.py end to end on the tiny run (in this process: TensorFlow and the
    converter's child are already up), a size larger than the training split included."""
    path = Path(__file__).resolve().parents[1] / "bench" / "calibration.py"
    monkeypatch.syspath_prepend(str(path.parent))  # as when run as a script: bench/machine.py beside it
    spec = importlib.util.spec_from_file_location("bench_calibration", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["calibration.py", str(tiny_run), "--sizes", "5,1000", "--seeds", "1", "--test-images", "30"])
    assert bench.main() == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["calibration_split"] == "train" and r["sizes"] == [5, 1000] and r["test_images"] == 30
    assert r["used_images"] == {"5": 5, "1000": r["train_images_available"]} and r["train_images_available"] < 1000
    for n in ("5", "1000"):
        assert 0.0 <= r["int8_accuracy"][n] <= 1.0 and r["agreement"][n] >= 0.9
    assert r["keras_accuracy"] >= 0.9 and "CPUs" in r["machine"]


def test_an_op_xnnpack_refuses_is_kept_float_and_the_int8_file_loads(tmp_path):
    """A conv whose ReLU output is zero on every calibration image (a dead channel group, as in a
    Lite0 detector's head) is calibrated to [0, 0]: output scale 7.8e-9, requantization scale far
    above XNNPACK's 256, and the converter's own int8 file does not load in LiteRT ("failed to
    create XNNPACK runtime"). The exported int8 file keeps that op float, loads, runs, stays
    full-integer elsewhere, and the per-layer analysis instruments the same split."""
    import keras
    import tensorflow as tf

    from tfcnn.export import quant_debug
    from tfcnn.export import tflite as T

    rng = np.random.default_rng(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="alive")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="dead", bias_initializer=keras.initializers.Constant(-1e4))(x)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="after")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="logits")(x))
    source = tmp_path / "float_input"
    model.export(str(source), verbose=False)
    rep = rng.integers(0, 256, (24, 16, 16, 3)).astype(np.float32)
    rep[0, 0, 0], rep[0, 0, 1] = 0.0, 255.0  # the input's range is the pixels' (scale 1, zero point 0)

    converter = tf.lite.TFLiteConverter.from_saved_model(str(source))
    T._calibrate_with(converter, "tflite_int8", rep, np.float32)
    converter.inference_input_type = converter.inference_output_type = tf.uint8
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    plain = converter.convert()
    refused = T.xnnpack_refused(plain)
    assert [r["op"] for r in refused] == ["CONV_2D"] and "dead" in refused[0]["output"], refused
    assert refused[0]["requantization_scale"] >= T.XNNPACK_MAX_REQUANTIZATION
    with pytest.raises(RuntimeError, match="XNNPACK"):  # the check predicts what LiteRT does
        T.interpreter(plain)

    data = T.convert("tflite_int8", source, rep)
    assert T.xnnpack_refused(data) == []
    it = T.interpreter(data)  # loads with XNNPACK
    images = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    inp_d, out_d = it.get_input_details()[0], it.get_output_details()[0]
    scale, zero = out_d["quantization"]
    for img in images:
        it.set_tensor(inp_d["index"], img[None])
        it.invoke()
        got = (it.get_tensor(out_d["index"]).astype(np.float32) - zero) * scale
        want = model(img[None].astype(np.float32)).numpy()
        assert np.all(np.isfinite(got)) and np.allclose(got, want, atol=2 * scale + 1e-6), (got, want)
    found = T.recipe(data)
    assert found["kind"] == "full_integer_int8" and found["execution"] == {"integer": 3, "hybrid": 0, "dequantized": 0, "float": 1}
    assert any("dead" in w["tensor"] for w in found["float_weights"])
    assert found["input_dtypes"] == ["uint8"] and found["output_dtypes"] == ["uint8"]

    analysis = quant_debug.analyse(source, rep, images.astype(np.float32), None, data)
    assert analysis["layers"] and not any("dead" in l["tensor"] for l in analysis["layers"] if l["op"] == "CONV_2D")
