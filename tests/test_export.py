"""Export stage: every format round-trips, the contract matches the files, verify catches problems.

One full export (all six formats) of a small trained model is shared by most tests; tests that
need their own export use one or two fast formats.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tfcnn.errors import ExportError, TfcnnError, VerificationError

ALL = ["savedmodel", "tflite_float32", "tflite_float16", "tflite_dynamic", "tflite_int8", "onnx", "coreml"]


def _make_run(root: Path, npz: Path, name: str, epochs: int) -> Path:
    """A run directory as the train stage leaves it (config, data, model, metrics), trained here
    with model.fit so these tests do not depend on the train/evaluate stages."""
    import keras

    from tfcnn.config import from_dict
    from tfcnn.data import load_data
    from tfcnn.models.registry import build_model
    from tfcnn.run import Metrics, Run

    import tfcnn.models.tiny  # noqa: F401  (registers tiny_cnn)

    cfg = from_dict(
        {
            "name": name,
            "data": {"source": f"numpy:{npz}", "batch_size": 32, "val_fraction": 0.2},
            "model": {"name": "tiny_cnn"},
            "export": {"representative_samples": 100, "latency_runs": 5},
        }
    )
    bundle = load_data(cfg.data)
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, bundle.info.input_shape, bundle.info.num_classes, bundle.info.mean, bundle.info.std)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(bundle.train, epochs=epochs, verbose=0)
    run = Run.create(root / name)
    run.save_config(cfg)
    run.write(bundle.info)
    model.save(run.path("model"))
    acc = float(model.evaluate(bundle.test, verbose=0)[1])
    run.write(Metrics(engine="fit", epochs_run=epochs, scores={"test_accuracy": acc}))
    return run.root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, npz_path) -> Path:
    return _make_run(tmp_path_factory.mktemp("export_runs"), npz_path, "tiny", epochs=15)


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """(version_dir, verification report) of one full export, shared read-only."""
    from tfcnn.export import export_run, verify_version

    root = tmp_path_factory.mktemp("repo")
    vd = export_run(run_dir, formats=ALL, root=root)
    report = verify_version(vd)
    return vd, report


@pytest.fixture(scope="module")
def reference(run_dir):
    """Keras softmax on the test split and the same images as contract RGB uint8."""
    import keras

    from tfcnn.config import load_json
    from tfcnn.data import load_data
    from tfcnn.export.wrapper import to_rgb

    cfg = load_json(run_dir / "config.json")
    x, y = load_data(cfg.data).arrays["test"]
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(x.astype("float32"), verbose=0), axis=-1))
    return to_rgb(x), y, probs


# --------------------------------------------------------------------------- layout and contract


def test_version_layout_contract_and_repository(exported, run_dir):
    vd, _ = exported
    assert vd.name == "1" and vd.parent.name == "tiny"
    for rel in ["saved_model.pb", "variables", "assets/labels.txt", "labels.txt", "contract.json", "model_card.json",
                "model_card.md", "tflite/model_float32.tflite", "tflite/model_float16.tflite",
                "tflite/model_dynamic.tflite", "tflite/model_int8.tflite", "onnx/model.onnx", "coreml/tiny.mlpackage",
                "verification.json", "verification.md"]:
        assert (vd / rel).exists(), rel
    assert not [p for p in vd.parent.iterdir() if p.name.startswith(".")], "temp dirs left behind"
    labels = (vd / "labels.txt").read_text().splitlines()
    assert labels == ["class_0", "class_1", "class_2"]
    assert (vd / "assets" / "labels.txt").read_text().splitlines() == labels

    config = (vd.parent / "models.config").read_text()
    assert f'base_path: "{vd.parent.resolve()}"' in config and "versions: 1" in config
    assert 'name: "tiny"' in config
    assert json.loads((run_dir / "exports.json").read_text())[-1] == str(vd.resolve())


def test_contract_matches_artifacts(exported, run_dir):
    from tfcnn.data.info import DataInfo
    from tfcnn.export.tflite import interpreter

    vd, _ = exported
    c = json.loads((vd / "contract.json").read_text())
    info = DataInfo.load(run_dir / "data.json")
    assert c["schema"] == "tfcnn.contract/1" and c["model"] == {"name": "tiny", "version": 1}
    inp = c["input"]
    assert (inp["height"], inp["width"], inp["channels"], inp["dtype"], inp["model_channels"]) == (16, 16, 3, "uint8", 1)
    assert inp["grayscale"].startswith("in_graph: 0.299*R + 0.587*G + 0.114*B")
    assert inp["normalization"]["mean"] == pytest.approx(info.mean, rel=1e-5)
    assert inp["normalization"]["std"] == pytest.approx(info.std, rel=1e-3)
    assert c["output"] == {"kind": "probabilities", "activation": "softmax", "num_classes": 3, "temperature": 1.0}  # not scaled
    assert c["labels"]["names"] == info.class_names
    assert set(c["artifacts"]) == set(ALL)

    for variant in ["tflite_float32", "tflite_float16", "tflite_dynamic", "tflite_int8"]:
        entry = c["artifacts"][variant]
        it = interpreter(vd / entry["file"])
        (i,), (o,) = it.get_input_details(), it.get_output_details()
        assert entry["inputs"][0]["name"] == i["name"] and entry["inputs"][0]["shape"] == [1, 16, 16, 3]
        assert entry["inputs"][0]["dtype"] == "uint8" == np.dtype(i["dtype"]).name
        assert entry["outputs"][0]["shape"] == [1, 3] == list(o["shape"])
        if variant == "tflite_int8":
            assert entry["inputs"][0]["quantization"] == {"scale": 1.0, "zero_point": 0}
            assert entry["outputs"][0]["dtype"] == "uint8"
            assert entry["outputs"][0]["quantization"] == {"scale": pytest.approx(1 / 256), "zero_point": 0}
        else:
            assert entry["inputs"][0]["quantization"] is None and entry["outputs"][0]["dtype"] == "float32"
    sigs = c["artifacts"]["savedmodel"]["signatures"]
    assert sigs["serving_default"]["inputs"] == {"image": {"dtype": "uint8", "shape": [None, 16, 16, 3]}}
    assert set(sigs["serving_default"]["outputs"]) == {"probabilities", "class_id", "label"}
    assert sigs["serving_bytes"]["inputs"] == {"image_bytes": {"dtype": "string", "shape": [None]}}


def test_model_card_hashes_every_artifact(exported):
    from tfcnn.util import sha256_file

    vd, _ = exported
    card = json.loads((vd / "model_card.json").read_text())
    listed = {row["path"]: row for row in card["artifacts"]}
    on_disk = {p.relative_to(vd).as_posix() for p in vd.rglob("*") if p.is_file()}
    assert on_disk - set(listed) == {"model_card.json", "model_card.json.sha256", "model_card.md", "verification.json", "verification.md"}
    for rel, row in listed.items():
        assert row["sha256"] == sha256_file(vd / rel) and row["bytes"] == (vd / rel).stat().st_size
    assert {"saved_model.pb", "tflite/model_int8.tflite", "labels.txt", "contract.json"} <= set(listed)
    assert any(p.startswith("variables/") for p in listed) and any(p.startswith("coreml/tiny.mlpackage/") for p in listed)
    for key in ["name", "version", "created", "dataset", "training", "metrics", "contract", "labels", "limitations"]:
        assert key in card
    assert card["dataset"]["splits"] == {"train": 192, "val": 48, "test": 90}
    assert card["metrics"]["formats"]["tflite_int8"]["passed"] is True  # filled in by verify
    assert "| tflite_int8 |" in (vd / "model_card.md").read_text()


# --------------------------------------------------------------------------- SavedModel / TF Serving


def test_savedmodel_matches_keras(exported, reference):
    from tfcnn.export import predict_savedmodel

    vd, _ = exported
    rgb, _, probs = reference
    out = predict_savedmodel(vd, rgb)
    np.testing.assert_allclose(out["probabilities"], probs, atol=1e-5)
    np.testing.assert_array_equal(out["class_id"], probs.argmax(1))
    assert [s.decode() for s in out["label"]] == [f"class_{i}" for i in probs.argmax(1)]


def test_savedmodel_rejects_wrong_dtype_and_shape(exported, reference):
    import tensorflow as tf

    from tfcnn.export import predict_savedmodel
    from tfcnn.export.savedmodel import load_savedmodel

    vd, _ = exported
    rgb = reference[0][:2]
    loaded = load_savedmodel(vd)
    with pytest.raises(TfcnnError, match=r"must be uint8 RGB images of shape \[N, 16, 16, 3\], got dtype float32"):
        predict_savedmodel(loaded, rgb.astype(np.float32))
    with pytest.raises(TfcnnError, match=r"got shape \[2, 16, 16, 1\]; repeat grayscale"):
        predict_savedmodel(loaded, rgb[..., :1])
    with pytest.raises(TfcnnError, match="add the batch axis"):
        predict_savedmodel(loaded, rgb[0])
    # What a raw client (or TF Serving) gets: TF's own dtype error, and our in-graph shape check.
    sig = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a uint8 tensor"):
        sig(image=tf.constant(rgb.astype(np.float32)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image must be uint8 RGB with shape \[N, 16, 16, 3\]"):
        sig(image=tf.constant(rgb[:, :8]))


def test_tf_serving_rest_bodies(exported, reference):
    from PIL import Image

    from tfcnn.export import rest_predict
    from tfcnn.export.savedmodel import load_savedmodel

    vd, _ = exported
    rgb, _, probs = reference
    loaded = load_savedmodel(vd)
    body = json.dumps({"instances": rgb[:3].tolist()})  # {"instances": [[[[r, g, b], ...]]]}
    preds = rest_predict(loaded, body)["predictions"]
    np.testing.assert_allclose([p["probabilities"] for p in preds], probs[:3], atol=1e-5)
    assert [p["label"] for p in preds] == [f"class_{i}" for i in probs[:3].argmax(1)]

    def b64(img: np.ndarray, fmt: str) -> str:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt)
        return base64.b64encode(buf.getvalue()).decode()

    # PNG is lossless at the model size, so the bytes path must give the very same probabilities.
    body = {"signature_name": "serving_bytes", "instances": [{"b64": b64(rgb[i], "PNG")} for i in range(3)]}
    preds = rest_predict(loaded, body)["predictions"]
    np.testing.assert_allclose([p["probabilities"] for p in preds], probs[:3], atol=1e-5)
    # A larger JPEG is decoded and resized in-graph.
    big = np.kron(rgb[0], np.ones((4, 4, 1), np.uint8))
    body = {"signature_name": "serving_bytes", "instances": [{"image_bytes": {"b64": b64(big, "JPEG")}}]}
    (pred,) = rest_predict(loaded, body)["predictions"]
    assert len(pred["probabilities"]) == 3 and abs(sum(pred["probabilities"]) - 1) < 1e-5
    columnar = rest_predict(loaded, {"inputs": rgb[:2].tolist()})["outputs"]
    assert np.asarray(columnar["probabilities"]).shape == (2, 3)
    bad = rgb[:1].astype(np.int64)
    bad[0, 0, 0, 0] = 300
    with pytest.raises(TfcnnError, match="0..255"):
        rest_predict(loaded, {"instances": bad.tolist()})


# --------------------------------------------------------------------------- TFLite / metadata / MediaPipe


def test_tflite_variants_round_trip(exported, reference):
    from tfcnn.export.tflite import VARIANTS, LiteRTRunner

    vd, report = exported
    rgb, y, probs = reference
    f32 = LiteRTRunner(vd / VARIANTS["tflite_float32"]).predict(rgb)
    np.testing.assert_allclose(f32, probs, atol=1e-4)
    for variant, min_agree in [("tflite_float16", 0.995), ("tflite_dynamic", 0.99), ("tflite_int8", 0.985)]:
        p = LiteRTRunner(vd / VARIANTS[variant]).predict(rgb)
        assert np.mean(p.argmax(1) == probs.argmax(1)) >= min_agree, variant
        assert report["formats"][variant]["agreement"] >= min_agree
    int8 = LiteRTRunner(vd / VARIANTS["tflite_int8"]).raw(rgb[0])
    assert int8.dtype == np.uint8  # uint8 in, uint8 out, as the contract says
    assert (vd / VARIANTS["tflite_int8"]).stat().st_size < (vd / VARIANTS["tflite_float32"]).stat().st_size


def test_tflite_metadata_reads_back(exported, run_dir):
    from tfcnn.data.info import DataInfo
    from tfcnn.export.tflite import VARIANTS
    from tfcnn.export.tflite_metadata import read_metadata

    vd, _ = exported
    info = DataInfo.load(run_dir / "data.json")
    for variant, rel in VARIANTS.items():
        md = read_metadata((vd / rel).read_bytes())
        assert md.name == f"tiny ({variant})" and md.version == "1"
        assert md.author == "tfcnn" and md.license == "Apache-2.0" and md.description
        assert md.labels == info.class_names and md.label_file == "labels.txt"
        assert md.label_file_type == "TENSOR_AXIS_LABELS"
        assert md.input_name == "image" and md.output_name == "probabilities" and md.color_space == "RGB"
        assert md.normalization == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}  # raw pixels in
        norm = md.contract["input"]["normalization"]
        assert norm["in_graph"] is True and norm["mean"] == pytest.approx(info.mean, rel=1e-5)
        assert "inside the model" in md.input_description


def test_mediapipe_image_classifier_reads_labels_from_metadata(exported, reference):
    from tfcnn.export.tflite import VARIANTS, LiteRTRunner
    from tfcnn.export.formats.tflite import mediapipe_check

    vd, report = exported
    rgb = reference[0][:30]
    for variant in ["tflite_int8", "tflite_float32"]:
        litert = LiteRTRunner(vd / VARIANTS[variant]).predict(rgb)
        result = mediapipe_check(vd / VARIANTS[variant], rgb, litert, ["class_0", "class_1", "class_2"])
        assert result["passed"] and result["labels_from_metadata"] and result["top1_agreement_with_litert"] == 1.0
        assert report["mediapipe"][variant]["passed"] is True
    # The check can fail: with the wrong label list, MediaPipe's category names no longer match.
    litert = LiteRTRunner(vd / VARIANTS["tflite_int8"]).predict(rgb)
    wrong = mediapipe_check(vd / VARIANTS["tflite_int8"], rgb, litert, ["a", "b", "c"])
    assert not wrong["passed"] and not wrong["labels_from_metadata"]


# --------------------------------------------------------------------------- CoreML


def test_coreml_spec(exported):
    from tfcnn.export.coreml import check_spec, read_spec

    vd, report = exported
    spec = read_spec(vd / "coreml" / "tiny.mlpackage")
    assert spec["model_type"] == "mlProgram" and spec["specification_version"] >= 6
    assert spec["inputs"] == [{"name": "image", "type": "imageType", "height": 16, "width": 16, "color_space": "RGB"}]
    assert spec["labels"] == ["class_0", "class_1", "class_2"]
    assert spec["compute_precision"] == "float16" and "FLOAT16" in spec["tensor_float_types"]
    md = spec["metadata"]
    assert (md["author"], md["license"], md["version"]) == ("tfcnn", "Apache-2.0", "1")
    assert md["short_description"] and "inside the model" in md["input_descriptions"]["image"]
    expected = {"height": 16, "width": 16, "labels": spec["labels"], "precision": "float16", "author": "tfcnn",
                "license": "Apache-2.0", "version": 1}
    assert check_spec(vd / "coreml" / "tiny.mlpackage", expected) == []
    assert check_spec(vd / "coreml" / "tiny.mlpackage", {**expected, "precision": "float32"})  # can fail
    row = report["formats"]["coreml"]
    assert row["spec_checked"] is True and row["passed"] is True


def test_coreml_float32_precision_from_run_config(run_dir, tmp_path):
    from tfcnn.export import export_run, verify_version
    from tfcnn.export.coreml import read_spec

    run = tmp_path / "run32"
    shutil.copytree(run_dir, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["export"]["coreml_precision"] = "float32"
    (run / "config.json").write_text(json.dumps(cfg))
    vd = export_run(run, formats=["coreml"], root=tmp_path / "repo")
    spec = read_spec(vd / "coreml" / "tiny.mlpackage")
    assert spec["compute_precision"] == "float32" and "FLOAT16" not in spec["tensor_float_types"]
    assert json.loads((vd / "contract.json").read_text())["artifacts"]["coreml"]["compute_precision"] == "float32"
    row = verify_version(vd, samples=10)["formats"]["coreml"]
    assert row["passed"] and row["thresholds"] == {"max_abs_diff": 1e-4, "agreement": 0.9995}  # tflite_float32's bar
    assert row["max_abs_diff"] <= 1e-4


def test_coreml_predictions_match_keras(exported, reference):
    """coremltools' predict on macOS, tfcnn's numpy MIL evaluator elsewhere; verify says which ran."""
    from tfcnn.export.formats import FORMATS

    vd, report = exported
    rgb, _, probs = reference
    entry = json.loads((vd / "contract.json").read_text())["artifacts"]["coreml"]
    runner = FORMATS["coreml"].runner(vd, entry, 1)
    p = runner.predict(rgb)
    assert p.shape == probs.shape and np.isfinite(p).all()
    assert np.mean(p.argmax(1) == probs.argmax(1)) >= 0.995 and np.abs(p - probs).max() <= 1e-2
    evaluator = "coremltools" if sys.platform == "darwin" else "tfcnn numpy MIL evaluator"
    row = report["formats"]["coreml"]
    assert runner.evaluator == row["evaluator"] == evaluator
    assert row["predictions"] == f"compared with Keras ({evaluator})" and row["thresholds"] == {"agreement": 0.995}
    assert row["agreement"] >= 0.995 and row["passed"] is True
    if sys.platform != "darwin":  # the evaluator's speed is not CoreML's: no latency is reported
        assert row.get("latency_ms_median") is None and row["latency"].startswith("not measured")


# --------------------------------------------------------------------------- verify


def test_verification_report(exported):
    vd, report = exported
    saved = json.loads((vd / "verification.json").read_text())
    assert saved["passed"] is True and report["passed"] is True
    assert saved["samples"] == 90 and saved["threads"] == 1
    assert saved["test_indices_source"] == "bundle.arrays['test'] order"
    assert set(saved["formats"]) == set(ALL)
    for fmt in ALL[:-1]:
        row = saved["formats"][fmt]
        for key in ["accuracy", "agreement", "max_abs_diff", "mean_abs_diff", "bytes", "latency_ms_median", "latency_ms_p95"]:
            assert row[key] is not None, (fmt, key)
        assert row["passed"] and row["failures"] == [] and row["thresholds"]
    assert saved["formats"]["savedmodel"]["max_abs_diff"] <= 1e-5
    assert saved["formats"]["tflite_float32"]["max_abs_diff"] <= 1e-4
    assert saved["formats"]["coreml"]["predictions"].startswith("compared with Keras")
    assert saved["formats"]["coreml"]["accuracy"] is not None and saved["formats"]["coreml"]["max_abs_diff"] is not None
    assert isinstance(saved["int8_changed"], list)
    md = (vd / "verification.md").read_text()
    assert "| format | size | accuracy | agreement |" in md and "| tflite_int8 |" in md


def test_threshold_rules():
    from tfcnn.export.formats import thresholds_for as limits_of
    from tfcnn.export.verify import threshold_failures

    def thresholds_for(fmt, overrides):
        return limits_of(fmt, {}, overrides)

    t = {}
    assert thresholds_for("savedmodel", t) == {"max_abs_diff": 1e-5, "agreement": 1.0}
    assert thresholds_for("onnx", t) == {"max_abs_diff": 1e-5, "agreement": 1.0}
    assert thresholds_for("tflite_int8", {"tflite_int8": {"agreement": 0.9}})["agreement"] == 0.9
    ok = {"accuracy": 0.9, "agreement": 1.0, "max_abs_diff": 5e-6}
    assert threshold_failures(ok, thresholds_for("savedmodel", t), 0.9) == []
    assert threshold_failures({**ok, "max_abs_diff": 2e-5}, thresholds_for("savedmodel", t), 0.9)
    assert threshold_failures({**ok, "agreement": 0.999}, thresholds_for("tflite_float32", t), 0.9)
    assert threshold_failures({**ok, "agreement": 0.996}, thresholds_for("tflite_float16", t), 0.9) == []
    assert threshold_failures({**ok, "agreement": 0.98}, thresholds_for("tflite_dynamic", t), 0.9)
    drop = threshold_failures({**ok, "accuracy": 0.885}, thresholds_for("tflite_int8", t), 0.9)
    assert drop and "accuracy drop 1.50 points" in drop[0]
    assert threshold_failures({**ok, "accuracy": 0.895}, thresholds_for("tflite_int8", t), 0.9) == []
    # NaN is a failure, not a number that compares false: every limit must be provably met.
    nan = float("nan")
    assert threshold_failures({**ok, "max_abs_diff": nan}, thresholds_for("savedmodel", t), 0.9)
    assert threshold_failures({**ok, "agreement": nan}, thresholds_for("tflite_float16", t), 0.9)
    assert threshold_failures({**ok, "accuracy": nan}, thresholds_for("tflite_int8", t), 0.9)
    assert threshold_failures({**ok, "non_finite": True}, thresholds_for("tflite_float16", t), 0.9)


def test_tampered_or_truncated_artifact_fails_naming_the_file(exported, tmp_path):
    from tfcnn.export import verify_version

    vd, _ = exported
    copy = tmp_path / "tiny" / "1"
    shutil.copytree(vd, copy)
    int8 = copy / "tflite" / "model_int8.tflite"
    int8.write_bytes(int8.read_bytes()[: int8.stat().st_size // 2])  # truncated
    data = sorted((copy / "variables").glob("variables.data*"))[0]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one byte flipped
    data.write_bytes(bytes(raw))
    with pytest.raises(VerificationError, match=r"tflite/model_int8.tflite: size .* \(truncated or replaced\)") as err:
        verify_version(copy, samples=20)
    assert f"variables/{data.name}: sha256 mismatch" in str(err.value)
    report = json.loads((copy / "verification.json").read_text())
    assert report["passed"] is False
    assert {p["file"] for p in report["integrity"]} == {"tflite/model_int8.tflite", f"variables/{data.name}"}
    assert report["formats"]["tflite_int8"]["skipped"] == "integrity check failed"
    assert report["formats"]["tflite_float32"]["passed"] is True  # untouched artifacts are still checked


def test_perturbed_model_fails_thresholds(run_dir, tmp_path):
    import keras

    from tfcnn.export import export_run, verify_version

    bad_run = tmp_path / "perturbed"
    shutil.copytree(run_dir, bad_run)
    model = keras.models.load_model(bad_run / "model.keras", compile=False)
    kernel = model.get_layer("logits").kernel
    rng = np.random.default_rng(0)
    kernel.assign(kernel.numpy() + rng.normal(0, 0.5, kernel.shape).astype("float32"))
    model.save(bad_run / "model.keras")
    vd = export_run(bad_run, formats=["savedmodel", "tflite_float32"], root=tmp_path / "repo")
    with pytest.raises(VerificationError, match=r"savedmodel: max \|p - p_keras\|"):
        verify_version(vd, run_dir=run_dir)  # judged against the original model
    report = json.loads((vd / "verification.json").read_text())
    assert report["passed"] is False and report["reference"]["same_as_exported"] is False
    assert not report["formats"]["savedmodel"]["passed"] and not report["formats"]["tflite_float32"]["passed"]
    assert verify_version(vd)["passed"]  # against its own (perturbed) model it is faithful


def test_non_finite_model_is_refused_by_export_and_fails_verify(run_dir, exported, tmp_path):
    import keras

    from tfcnn.export import export_run, verify_version

    nan_run = tmp_path / "nan"
    shutil.copytree(run_dir, nan_run)
    model = keras.models.load_model(nan_run / "model.keras", compile=False)
    kernel = model.get_layer("logits").kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    model.save(nan_run / "model.keras")
    with pytest.raises(ExportError, match=r"export step 'load model' failed: .*non-finite weights in .*logits"):
        export_run(nan_run, formats=["tflite_float32"], root=tmp_path / "repo")
    assert not (tmp_path / "repo" / "tiny").exists() or not list((tmp_path / "repo" / "tiny").iterdir())
    # An artifact judged against a NaN reference model never passes (NaN is a failure, not a number).
    vd, _ = exported
    copy = tmp_path / "v" / "tiny" / "1"
    shutil.copytree(vd, copy)
    with pytest.raises(VerificationError, match="non-finite"):
        verify_version(copy, run_dir=nan_run, samples=20)
    report = json.loads((copy / "verification.json").read_text())
    assert report["passed"] is False and report["formats"]["savedmodel"]["passed"] is False


# --------------------------------------------------------------------------- robustness


def test_failed_step_leaves_no_version(run_dir, tmp_path, monkeypatch):
    from tfcnn.export import export_run, tflite

    real = tflite.convert

    def flaky(variant, *args, **kwargs):
        if variant == "tflite_int8":
            raise RuntimeError("calibration exploded")
        return real(variant, *args, **kwargs)

    monkeypatch.setattr(tflite, "convert", flaky)
    before = (run_dir / "exports.json").read_text() if (run_dir / "exports.json").exists() else None
    with pytest.raises(ExportError, match=r"export step 'tflite_int8' failed: RuntimeError: calibration exploded"):
        export_run(run_dir, formats=["tflite_float32", "tflite_int8"], root=tmp_path)
    assert list((tmp_path / "tiny").iterdir()) == []  # no version, no temp dir
    after = (run_dir / "exports.json").read_text() if (run_dir / "exports.json").exists() else None
    assert before == after


def test_a_converter_crash_is_one_line_and_leaves_nothing(run_dir, tmp_path, monkeypatch):
    import fakedata
    from tfcnn.export import export_run, tflite

    monkeypatch.setattr(tflite, "convert", fakedata.crash_converter)  # importable: runs in the child
    with pytest.raises(ExportError, match=r"export step 'tflite_float32' crashed \(signal 11, SIGSEGV\) in the converter's child process"):
        export_run(run_dir, formats=["savedmodel", "tflite_float32"], root=tmp_path)
    assert list((tmp_path / "tiny").iterdir()) == []  # no version, no temp dir
    monkeypatch.undo()
    assert export_run(run_dir, formats=["tflite_float32"], root=tmp_path).name == "1"  # and the next export works


def test_stale_temp_dirs_are_removed_and_file_system_errors_are_one_line(run_dir, exported, tmp_path, monkeypatch):
    import errno

    from tfcnn.export import exporter, export_run, verify_version
    from tfcnn.export import verify as verify_mod

    stale = tmp_path / "tiny" / ".tmp-1-999999-x"  # left by an export whose process is gone
    (stale / "tflite").mkdir(parents=True)
    mine = tmp_path / "tiny" / f".tmp-1-{os.getpid()}-y"  # this process's own: not touched
    mine.mkdir()
    export_run(run_dir, formats=["tflite_float32"], root=tmp_path)
    assert not stale.exists() and mine.exists()

    def read_only(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(exporter, "ensure_dir", read_only)
    with pytest.raises(ExportError, match=r"cannot create the model repository directory .*: Read-only file system; choose a writable export.root"):
        export_run(run_dir, formats=["tflite_float32"], root=tmp_path / "ro")
    monkeypatch.undo()

    vd, _ = exported
    copy = tmp_path / "v" / "tiny" / "1"
    shutil.copytree(vd, copy)
    card_before = (copy / "model_card.json").read_bytes()

    def full_disk(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(verify_mod, "write_json", full_disk)
    with pytest.raises(VerificationError, match=r"cannot write the verification results into .*: No space left on device; the model card was left unchanged"):
        verify_version(copy, samples=10)
    assert (copy / "model_card.json").read_bytes() == card_before


def test_versions_overwrite_and_android_hook(run_dir, tmp_path, monkeypatch):
    import types

    from tfcnn.export import export_run

    fast = ["tflite_float32"]
    v1 = export_run(run_dir, formats=fast, root=tmp_path)
    v2 = export_run(run_dir, formats=fast, root=tmp_path)
    assert (v1.name, v2.name) == ("1", "2")
    config = (tmp_path / "tiny" / "models.config").read_text()
    assert "versions: 1" in config and "versions: 2" in config
    with pytest.raises(ExportError, match="already exists; pass overwrite=True"):
        export_run(run_dir, formats=fast, root=tmp_path, version=1)
    calls = []
    fake = types.ModuleType("tfcnn.export.android")
    fake.write_android_assets = lambda vd, app, variant="tflite_int8": calls.append((vd, app, variant)) or {}
    monkeypatch.setitem(sys.modules, "tfcnn.export.android", fake)
    again = export_run(
        run_dir, formats=["tflite_float32", "tflite_dynamic"], root=tmp_path, version=1, overwrite=True,
        android=tmp_path / "app", android_variant="tflite_dynamic",
    )
    assert again == v1 and (v1 / "tflite" / "model_dynamic.tflite").exists()
    assert json.loads((v1 / "contract.json").read_text())["model"]["version"] == 1
    assert calls == [(v1, tmp_path / "app", "tflite_dynamic")]
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["1", "2", "models.config"]
    with pytest.raises(ExportError, match="export.formats = 'onx' is not a registered export format \\(did you mean 'onnx'\\?\\)"):
        export_run(run_dir, formats=["onx"], root=tmp_path)
    with pytest.raises(ExportError, match="--android needs the tflite_int8 variant"):
        export_run(run_dir, formats=fast, root=tmp_path, android=tmp_path / "app")


def test_benchmark(exported):
    from tfcnn.export import benchmark_version

    vd, _ = exported
    res = benchmark_version(vd, runs=3, threads=1)
    arts = res["artifacts"]
    for fmt in ALL[:-1]:
        assert arts[fmt]["latency_ms_median"] > 0 and arts[fmt]["bytes"] > 0
    if sys.platform != "darwin":
        assert "skipped" in arts["coreml"]
    with pytest.raises(TfcnnError, match="contract.json is missing"):
        benchmark_version(vd.parent)


def test_rgb_model_exports_without_grayscale(tmp_path, npz_rgb_path):
    from tfcnn.export import export_run, predict_savedmodel
    from tfcnn.export.tflite import VARIANTS, LiteRTRunner

    run = _make_run(tmp_path, npz_rgb_path, "rgb", epochs=3)
    vd = export_run(run, formats=["savedmodel", "tflite_int8"], root=tmp_path / "repo")
    c = json.loads((vd / "contract.json").read_text())
    assert c["input"]["model_channels"] == 3 and c["input"]["grayscale"] is None
    assert len(c["input"]["normalization"]["mean"]) == 3
    img = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    sm = predict_savedmodel(vd, img)["probabilities"]
    q = LiteRTRunner(vd / VARIANTS["tflite_int8"]).predict(img)
    assert sm.shape == q.shape == (2, 3) and np.abs(sm - q).max() < 0.1


# --------------------------------------------------------------------------- ONNX (the registry's proof)


def test_onnx_runs_the_serving_signature_in_onnxruntime(exported, reference):
    import onnxruntime as ort

    from tfcnn.export.formats.onnx import OPSET

    vd, report = exported
    entry = json.loads((vd / "contract.json").read_text())["artifacts"]["onnx"]
    assert entry["file"] == "onnx/model.onnx" and entry["opset"] == OPSET and entry["source_signature"] == "serving_default"
    assert [i["name"] for i in entry["inputs"]] == ["image"] and entry["inputs"][0]["dtype"] == "uint8"
    assert sorted(o["name"] for o in entry["outputs"]) == ["class_id", "label", "probabilities"]
    row = report["formats"]["onnx"]
    assert row["passed"] and row["agreement"] == 1.0 and row["max_abs_diff"] <= 1e-5 and row["latency_ms_median"] > 0
    card = json.loads((vd / "model_card.json").read_text())
    assert {r["format"] for r in card["artifacts"] if r["path"].startswith("onnx/")} == {"onnx"}
    assert card["export"]["onnx"]["opset"] == OPSET
    # The served graph, labels included: class_id is the argmax and label comes from labels.txt.
    rgb, _, probs = reference
    sess = ort.InferenceSession(str(vd / entry["file"]), providers=["CPUExecutionProvider"])
    p, cid, label = sess.run(["probabilities", "class_id", "label"], {"image": rgb[:16]})
    assert np.abs(p - probs[:16]).max() <= 1e-5
    assert list(cid) == list(p.argmax(1)) and [str(x) for x in label] == [f"class_{i}" for i in cid]


def test_onnx_interface_check_fails_on_a_foreign_model(exported, tmp_path):
    from tfcnn.export.formats import FORMATS

    vd, _ = exported
    card = json.loads((vd / "model_card.json").read_text())
    entry = card["contract"]["artifacts"]["onnx"]
    assert FORMATS["onnx"].static_check(vd, entry, card) == []
    copy = tmp_path / "v"
    shutil.copytree(vd, copy)
    (copy / entry["file"]).write_bytes(b"not an onnx model")
    fails = FORMATS["onnx"].static_check(copy, entry, card)
    assert fails and "cannot read the ONNX model" in fails[0]
    wrong_opset = {**entry, "opset": entry["opset"] + 1}
    assert any("contract.json says" in f for f in FORMATS["onnx"].static_check(vd, wrong_opset, card))
