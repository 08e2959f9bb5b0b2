"""The Android demo: its Kotlin classifier core replays golden vectors from real LiteRT runs, and
its assets are checked against the export they came from.

The classifier module is compiled once per session with Debian's kotlinc and run with JUnit 4,
on the checked-in goldens and on goldens freshly written from an export. Both carry the golden
photos (real PNGs of other sizes, with alpha): Kotlin's resize must give Python's pixels exactly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from tfcnn.errors import ExportError, VerificationError
from tfcnn.export.android import (
    ASSETS,
    GOLDEN,
    PHOTOS,
    check_android_assets,
    input_tensor,
    rgb_to_argb,
    tensor_specs,
    write_android_assets,
)

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "android_demo"
CLASSIFIER = APP / "classifier"
JARS = [Path("/usr/share/java/junit4.jar"), Path("/usr/share/java/hamcrest-core.jar")]
STDLIB = Path("/usr/share/java/kotlin-stdlib.jar")


# --------------------------------------------------------------------------- a version directory to export from


def make_version_dir(
    root: Path,
    *,
    size: int = 16,
    version: int = 1,
    name: str = "tiny",
    epochs: int = 3,
    data: tuple | None = None,
    full_range: bool = True,
    variants: tuple[str, ...] = ("tflite_int8", "tflite_float32"),
    fit: str = "stretch",
):
    """A contract-shaped version directory built without the export stage (tflite_int8/float32,
    labels, contract, model card), for what the real exporter never writes: with
    `full_range=False` the int8 input quantization takes the data's own range (scale != 1);
    `fit` is the contract's input.fit.

    tiny_cnn on synthetic data (or `data` = (x, y, x_test, y_test, labels), grayscale uint8 NHWC),
    wrapped uint8 RGB -> in-graph luma -> model -> softmax; `full_range` pins the calibration range
    to 0..255 with a black and a white frame, giving the contract's scale 1 / zero point 0.
    """
    import keras
    import tensorflow as tf
    from fakedata import synthetic_arrays

    from tfcnn.config import ModelConfig
    from tfcnn.data.bundle import channel_stats
    from tfcnn.models import build_model

    if data is None:
        x, y = synthetic_arrays(240, size=size, seed=1)
        xt, yt = synthetic_arrays(30, size=size, seed=2)
        labels = ["class_0", "class_1", "class_2"]
    else:
        x, y, xt, yt, labels = data
        size = x.shape[1]
    mean, std = channel_stats(x)
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(name="tiny_cnn"), (size, size, 1), len(labels), mean, std)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x.astype("float32"), y, epochs=epochs, batch_size=32, verbose=0)

    def wrapper(dtype: str) -> keras.Model:
        image = keras.Input((size, size, 3), batch_size=1, dtype=dtype, name="image")
        rgb = keras.ops.cast(image, "float32")
        luma = keras.ops.sum(rgb * np.array([0.299, 0.587, 0.114], "float32"), axis=-1, keepdims=True)
        return keras.Model(image, keras.layers.Softmax(name="probabilities")(model(luma)))

    rep = np.repeat(x[:64], 3, axis=-1).astype("float32")
    if full_range:
        rep = np.concatenate([np.zeros_like(rep[:1]), np.full_like(rep[:1], 255), rep])
    blobs = {}
    if "tflite_int8" in variants:
        conv = tf.lite.TFLiteConverter.from_keras_model(wrapper("float32"))
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([rep[i : i + 1]] for i in range(len(rep)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
        blobs["tflite_int8"] = conv.convert()
    if "tflite_float32" in variants:
        blobs["tflite_float32"] = tf.lite.TFLiteConverter.from_keras_model(wrapper("uint8")).convert()

    vdir = root / name / str(version)
    (vdir / "tflite").mkdir(parents=True)
    (vdir / "labels.txt").write_text("\n".join(labels) + "\n")
    artifacts, card_files = {}, []
    for variant, blob in blobs.items():
        rel = f"tflite/model_{variant.split('_')[1]}.tflite"
        (vdir / rel).write_bytes(blob)
        ins, outs = tensor_specs(vdir / rel)
        artifacts[variant] = {"format": "tflite", "file": rel, "inputs": ins, "outputs": outs}
        card_files.append({"path": rel, "format": "tflite", "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)})
    contract = {
        "schema": "tfcnn.contract/1",
        "model": {"name": name, "version": version},
        "input": {
            "height": size, "width": size, "channels": 3, "color_order": "RGB", "layout": "NHWC",
            "dtype": "uint8", "value_range": [0, 255], "resize": "bilinear", "fit": fit, "alpha": "over_black",
            "model_channels": 1,
            "grayscale": "in_graph: 0.299*R + 0.587*G + 0.114*B",
            "normalization": {"in_graph": True, "mean": mean, "std": std, "formula": "(x - mean) / std per channel, x in 0..255"},
        },
        "output": {"kind": "probabilities", "activation": "softmax", "num_classes": len(labels)},
        "labels": {"file": "labels.txt", "names": labels},
        "artifacts": artifacts,
    }
    (vdir / "contract.json").write_text(json.dumps(contract, indent=2))
    card = {"name": name, "version": version, "created": date.today().isoformat(), "contract": contract,
            "labels": labels, "artifacts": card_files, "limitations": ["synthetic test model"]}
    (vdir / "model_card.json").write_text(json.dumps(card, indent=2))
    return vdir, (xt, yt)


def copy_app(dst: Path) -> Path:
    """A throw-away copy of android_demo without build outputs or a previously exported model."""
    ignore = shutil.ignore_patterns("build", ".gradle", "model.tflite", "contract.json", "labels.txt")
    shutil.copytree(APP, dst, ignore=ignore)
    return dst


# --------------------------------------------------------------------------- compiling and running the JVM tests


FAST_JVM = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]  # short-lived JVMs: C1 only halves kotlinc's CPU time


@pytest.fixture(scope="module")
def jvm(tmp_path_factory):
    """Start compiling classifier main + test sources (once per session, in the background while
    other fixtures build models); returns a runner for JUnitCore that waits for the compiler."""
    kotlinc, java = shutil.which("kotlinc"), shutil.which("java")
    if kotlinc is None or java is None:
        pytest.skip("kotlinc/java not found: install the Debian packages `kotlin` and `junit4` (apt-get install kotlin junit4)")
    missing = [str(j) for j in JARS + [STDLIB] if not j.is_file()]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: install the Debian packages `junit4` and `kotlin`")
    out = tmp_path_factory.mktemp("kotlin") / "classes"
    cp = ":".join(str(j) for j in JARS)
    env = {**os.environ, "JAVA_OPTS": " ".join([os.environ.get("JAVA_OPTS", ""), *FAST_JVM]).strip()}
    compiler = subprocess.Popen(
        [kotlinc, str(CLASSIFIER / "src/main/kotlin"), str(CLASSIFIER / "src/test/kotlin"), "-cp", cp, "-d", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    classes: list[str] = []

    def compiled() -> list[str]:
        if not classes:
            stdout, stderr = compiler.communicate(timeout=600)
            assert compiler.returncode == 0, f"kotlinc failed:\n{stdout}\n{stderr}"
            errors = [line for line in stderr.splitlines() if "error:" in line]
            assert not errors, "\n".join(errors)
            found = sorted(
                str(p.relative_to(out).with_suffix("")).replace("/", ".") for p in out.rglob("*Test.class") if "$" not in p.name
            )
            assert len(found) >= 6, found
            classes.extend(found)
        return classes

    def run(props: dict[str, str], resources: Path | None = None) -> subprocess.CompletedProcess:
        tests = compiled()
        classpath = [str(out), str(STDLIB), cp] + ([str(resources)] if resources else [])
        cmd = [java, *FAST_JVM, *(f"-D{k}={v}" for k, v in props.items()), "-cp", ":".join(classpath),
               "org.junit.runner.JUnitCore", *tests]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    yield run
    if compiler.poll() is None:
        compiler.kill()
        compiler.communicate()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_run, npz_path):
    """Real exports of 'tiny': v1 from the tiny_run fixture straight into an app copy
    (`export_run(..., android=...)`), then v2, a re-export of the same data at 20x20."""
    from tfcnn.config import from_dict
    from tfcnn.export import export_run
    from tfcnn.pipeline import run_pipeline

    base = tmp_path_factory.mktemp("android_export")
    run1 = base / "run1"
    shutil.copytree(tiny_run, run1)  # export_run records itself in the run dir; tiny_run stays read-only
    app = copy_app(base / "android_demo")
    root = base / "export"
    v1 = export_run(run1, formats=["tflite_int8", "tflite_float32"], root=root, name="tiny", android=app)
    cfg = from_dict(
        {
            "name": "tiny20",
            "data": {"source": f"numpy:{npz_path}", "image_size": [20, 20], "batch_size": 32, "val_fraction": 0.2},
            "model": {"name": "tiny_cnn"},
            "train": {"engine": "fit", "epochs": 1, "tensorboard": False},
            "export": {"enabled": False},
            "report": False,
        }
    )
    run_pipeline(cfg, base / "run2")
    v2 = export_run(base / "run2", formats=["tflite_int8"], root=root, name="tiny")
    return {"v1": v1, "v2": v2, "app": app, "run1": run1}


def _test_split(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from tfcnn import config as config_mod
    from tfcnn.data import load_data

    return load_data(config_mod.load_json(run_dir / "config.json").data).arrays["test"]


def _junit_ok(proc: subprocess.CompletedProcess) -> int:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    m = re.search(r"^OK \((\d+) tests?\)", proc.stdout, re.M)
    assert m, text[-4000:]
    return int(m.group(1))


# --------------------------------------------------------------------------- tests


def test_fresh_export_goldens_pass_on_the_jvm(jvm, exported):
    app, v1 = exported["app"], exported["v1"]
    assert v1.name == "1"
    proc = jvm({"tfcnn.golden.dir": str(app / GOLDEN), "tfcnn.assets.dir": str(app / ASSETS), "tfcnn.export.dir": str(v1)})
    _junit_ok(proc)
    assert "app assets in" in proc.stdout and "matches the export in" in proc.stdout, proc.stdout
    golden = json.loads((app / GOLDEN / "golden.json").read_text())
    assert golden["samples_source"] == "test split of run1"
    assert len(golden["samples"]) == 5
    assert golden["model_tensors"]["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}
    assert _photo_report(proc, golden) == {"stretch": 0, "center_crop": 0}


def _photo_report(proc: subprocess.CompletedProcess, golden: dict) -> dict[str, int]:
    """Differing values per fit, summed over the photos, as PhotoGoldenTest printed them; every
    golden photo must have been compared with both fits."""
    rows = re.findall(r"^  (\S+\.png) \d+x\d+ \w+ (\w+): (\d+) of (\d+) values differ", proc.stdout, re.M)
    names = {p["file"] for p in golden["photos"]}
    assert len(names) >= 8 and {(n, f) for n, f, _, _ in rows} == {(n, f) for n in names for f in ("stretch", "center_crop")}, proc.stdout[-3000:]
    h, w = golden["contract"]["input"]["height"], golden["contract"]["input"]["width"]
    assert all(int(total) == h * w * 3 for *_, total in rows)
    counts = {"stretch": 0, "center_crop": 0}
    for _, fit, n, _ in rows:
        counts[fit] += int(n)
    return counts


def test_checked_in_goldens_pass_on_the_jvm(jvm):
    golden = json.loads((CLASSIFIER / "src/test/resources/golden/golden.json").read_text())
    assert golden["samples"] and golden["contract"]["android"]["variant"]
    proc = jvm({"tfcnn.assets.dir": ""}, resources=CLASSIFIER / "src/test/resources")
    assert _junit_ok(proc) >= 40
    assert _photo_report(proc, golden) == {"stretch": 0, "center_crop": 0}


def test_float32_variant_goldens_pass_on_the_jvm(jvm, exported, tmp_path):
    app = copy_app(tmp_path / "android_demo")
    info = write_android_assets(exported["v1"], app, "tflite_float32", n_samples=3)
    golden = json.loads(Path(info["golden"]).read_text())
    assert golden["model_tensors"]["output"]["dtype"] == "float32"
    assert golden["model_tensors"]["input"]["quantization"] is None
    assert len(golden["samples"]) == 3
    proc = jvm({"tfcnn.golden.dir": str(app / GOLDEN), "tfcnn.assets.dir": str(app / ASSETS), "tfcnn.export.dir": str(exported["v1"])})
    _junit_ok(proc)
    check_android_assets(app, exported["v1"])


def test_golden_input_is_raw_rgb_pixels_of_the_test_images(exported):
    """The contract's scaling: uint8 RGB 0..255 straight from the pixels (normalization is in-graph)."""
    golden = json.loads((exported["app"] / GOLDEN / "golden.json").read_text())
    xt, yt = _test_split(exported["run1"])
    for s in golden["samples"]:
        fed = np.frombuffer(base64.b64decode(s["input_b64"]), np.uint8)
        np.testing.assert_array_equal(fed, np.repeat(xt[s["index"]], 3, axis=-1).reshape(-1))
        assert s["label"] == int(yt[s["index"]])
        argb = np.asarray(s["argb"], np.int64) & 0xFFFFFFFF
        assert np.all(argb >> 24 == 0xFF)
        assert len(s["top_k"]) == golden["k"] == 3
        assert [t["label"] for t in s["top_k"]] == [golden["labels"][t["index"]] for t in s["top_k"]]


def test_python_preprocessing_handles_normalization_and_int8():
    contract = {"input": {"normalization": {"in_graph": False, "mean": [127.5], "std": [127.5]}}}
    tensor = {"shape": [1, 1, 2, 1], "dtype": "int8", "quantization": {"scale": 1 / 128, "zero_point": 0}}
    argb = rgb_to_argb(np.array([[[[0], [255]]]], np.uint8))[0]
    np.testing.assert_array_equal(input_tensor(argb, contract, tensor).reshape(-1), [-128, 127])
    f32 = input_tensor(argb, contract, {"shape": [1, 1, 2, 1], "dtype": "float32", "quantization": None})
    np.testing.assert_array_equal(f32.reshape(-1), np.array([-1.0, 1.0], np.float32))


def test_assets_agree_with_the_export(exported):
    app, v1 = exported["app"], exported["v1"]
    check_android_assets(app, v1)
    contract = json.loads((app / ASSETS / "contract.json").read_text())
    model = app / ASSETS / "model.tflite"
    assert contract["android"]["variant"] == "tflite_int8"
    assert contract["android"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert model.read_bytes() == (v1 / "tflite/model_int8.tflite").read_bytes()
    assert (app / ASSETS / "labels.txt").read_text() == (v1 / "labels.txt").read_text()
    assert {k: v for k, v in contract.items() if k != "android"} == json.loads((v1 / "contract.json").read_text())


def test_contract_drift_fails_check_android_assets(exported):
    """v2 changed the input size; the app still ships v1: the Python check names the field."""
    app, v2 = exported["app"], exported["v2"]
    with pytest.raises(VerificationError) as err:
        check_android_assets(app, v2)
    msg = str(err.value)
    assert "contract.json input.height is 16 in the app but 20 in the export" in msg, msg
    assert "sha256" in msg and "--android" in msg, msg


def test_contract_drift_fails_the_jvm_test(jvm, exported):
    """Same drift, seen by the JUnit export-agreement test from the goldens alone."""
    app, v2 = exported["app"], exported["v2"]
    proc = jvm({"tfcnn.golden.dir": str(app / GOLDEN), "tfcnn.assets.dir": str(app / ASSETS), "tfcnn.export.dir": str(v2)})
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "ExportAgreementTest" in proc.stdout
    assert "input.height, input.width: model input is 1x16x16x3 but contract.json says 1x20x20x3" in proc.stdout, proc.stdout[-3000:]


def test_re_export_with_android_fixes_drift(jvm, exported, tmp_path):
    """Running the Android step for v2 makes both checks pass again."""
    app, v2 = copy_app(tmp_path / "android_demo"), exported["v2"]
    write_android_assets(v2, app, n_samples=3)
    check_android_assets(app, v2)
    _junit_ok(jvm({"tfcnn.golden.dir": str(app / GOLDEN), "tfcnn.assets.dir": str(app / ASSETS), "tfcnn.export.dir": str(v2)}))


def test_quantized_input_with_non_unit_scale_matches(jvm, tmp_path):
    """A uint8 input quantized with the data's own range (scale != 1, not what tfcnn exports, but
    legal LiteRT): the goldens then pin q = round(x / scale) + zero_point in Kotlin too."""
    vdir, samples = make_version_dir(tmp_path / "export", full_range=False, epochs=1, variants=("tflite_int8",), fit="center_crop")
    app = copy_app(tmp_path / "android_demo")
    write_android_assets(vdir, app, samples=samples, n_samples=4)
    check_android_assets(app, vdir)
    golden = json.loads((app / GOLDEN / "golden.json").read_text())
    q = golden["model_tensors"]["input"]["quantization"]
    assert q and abs(q["scale"] - 1.0) > 0.01, q
    raw = np.frombuffer(base64.b64decode(golden["samples"][0]["input_b64"]), np.uint8)
    assert not np.array_equal(raw, np.repeat(samples[0][0], 3, axis=-1).reshape(-1))
    # The photos' tensors follow the contract's fit (center_crop here), quantized with that scale.
    wide = next(p for p in golden["photos"] if p["file"] == "china_wide_60x40.png")
    crop = np.frombuffer(base64.b64decode(wide["resized_b64"]["center_crop"]), np.uint8)
    argb = rgb_to_argb(crop.reshape(1, 16, 16, 3))[0]
    tin = golden["model_tensors"]["input"]
    assert base64.b64decode(wide["input_b64"]) == input_tensor(argb, golden["contract"], tin).tobytes()
    assert wide["resized_b64"]["center_crop"] != wide["resized_b64"]["stretch"]
    proc = jvm({"tfcnn.golden.dir": str(app / GOLDEN), "tfcnn.assets.dir": str(app / ASSETS), "tfcnn.export.dir": str(vdir)})
    _junit_ok(proc)
    assert _photo_report(proc, golden) == {"stretch": 0, "center_crop": 0}


def test_tampered_assets_are_named(exported, tmp_path):
    app = copy_app(tmp_path / "android_demo")
    shutil.copytree(exported["app"] / ASSETS, app / ASSETS, dirs_exist_ok=True)
    labels = app / ASSETS / "labels.txt"
    labels.write_text("class_0\nclass_1\n")
    with pytest.raises(VerificationError, match=r"labels.txt has 2 labels but the model outputs 3 scores"):
        check_android_assets(app, exported["v1"])
    shutil.copy(exported["v1"] / "labels.txt", labels)
    shutil.copy(exported["v1"] / "tflite/model_float32.tflite", app / ASSETS / "model.tflite")
    with pytest.raises(VerificationError) as err:
        check_android_assets(app, exported["v1"])
    assert "sha256" in str(err.value) and "artifacts.tflite_int8.outputs[0].dtype" in str(err.value)
    (app / ASSETS / "model.tflite").unlink()
    with pytest.raises(VerificationError, match="model.tflite is missing"):
        check_android_assets(app, exported["v1"])


def test_bad_targets_are_refused(exported, tmp_path):
    with pytest.raises(ExportError, match="not the tfcnn Android demo"):
        write_android_assets(exported["v1"], tmp_path)
    app = copy_app(tmp_path / "android_demo")
    with pytest.raises(ExportError, match="tflite_fp16.*choose one of tflite_float32, tflite_int8"):
        write_android_assets(exported["v1"], app, "tflite_fp16")


def test_app_project_is_pinned_and_complete():
    settings = (APP / "settings.gradle.kts").read_text()
    assert 'include(":app", ":classifier")' in settings
    catalog = tomllib.loads((APP / "gradle/libs.versions.toml").read_text())
    for key, value in catalog["versions"].items():
        assert re.fullmatch(r"\d+(\.\d+)+", value), f"{key} = {value} is not a pinned version"
    assert catalog["libraries"]["litert"]["group"] == "com.google.ai.edge.litert"
    assert catalog["libraries"]["litert"]["name"] == "litert"
    wrapper = (APP / "gradle/wrapper/gradle-wrapper.properties").read_text()
    assert re.search(r"gradle-\d+\.\d+(\.\d+)?-bin\.zip", wrapper)
    app_gradle = (APP / "app/build.gradle.kts").read_text()
    assert "minSdk = 24" in app_gradle and "libs.litert" in app_gradle and 'project(":classifier")' in app_gradle
    sources = "\n".join(p.read_text() for p in (APP / "app/src/main").rglob("*.kt"))
    for needle in ("PickVisualMedia", "TakePicturePreview", "InterpreterApi", "ModelMismatchException", "inPremultiplied = false"):
        assert needle in sources, needle
    # the model's input is resized by the classifier core (Pillow's bilinear), never by Android's filter
    assert "createScaledBitmap(software" not in sources and "classify(width, height" in sources
    # the classifier module is plain JVM Kotlin
    core = "\n".join(p.read_text() for p in (CLASSIFIER / "src/main").rglob("*.kt"))
    assert "import android" not in core and "import androidx" not in core


def test_model_weights_are_git_ignored_and_samples_ship():
    for rel in ("app/src/main/assets/model.tflite", "app/src/main/assets/contract.json", "app/src/main/assets/labels.txt"):
        proc = subprocess.run(["git", "check-ignore", "-q", str(APP / rel)], cwd=REPO)
        assert proc.returncode == 0, f"{rel} is not git-ignored"
    from PIL import Image

    samples = sorted((APP / ASSETS / "samples").glob("*.png"))
    assert len(samples) >= 4
    for p in samples:
        with Image.open(p) as im:
            assert im.size == (28, 28)
    # 5 samples + 8 photos (each resized with both fits) at 28x28: ~135 KB
    assert (CLASSIFIER / "src/test/resources/golden/golden.json").stat().st_size < 180_000


# --------------------------------------------------------------------------- the resize the app reproduces


def test_reference_resize_is_pillow_bilinear_with_the_pass_order_pinned():
    """tfcnn.data.images.resize_image is Pillow's own BILINEAR (and ImageOps.fit's box for
    center_crop) whenever Pillow itself runs the horizontal pass first; Pillow >= 13 runs the
    vertical pass first when the height shrinks > 2x more than the width, and that moves pixels
    by one step, which is why the reference pins the order (and the Kotlin core follows it)."""
    from PIL import Image, ImageOps

    from tfcnn.data.images import crop_box, resize_image

    rng = np.random.default_rng(0)
    order_matters = 0
    for i in range(60):
        (sw, sh), (w, h) = rng.integers(1, 70, 2), rng.integers(1, 30, 2)
        arr = rng.integers(0, 256, (sh, sw, 3), dtype=np.uint8)
        for fit in ("stretch", "center_crop"):
            ours = resize_image(arr, (h, w), fit)
            img = Image.fromarray(arr)
            pil = ImageOps.fit(img, (w, h), Image.Resampling.BILINEAR) if fit == "center_crop" else img.resize((w, h), Image.Resampling.BILINEAR)
            box = crop_box(sw, sh, w, h, fit)
            if fit == "center_crop":
                assert box[2] - box[0] <= sw and box[3] - box[1] <= sh and abs((box[2] - box[0]) * h - (box[3] - box[1]) * w) < 1e-6 * sw * sh
            if not ((sh - h) > 0 and (sh - h) > (sw - w) * 2):  # Pillow 13 goes horizontal first
                np.testing.assert_array_equal(ours, np.asarray(pil), err_msg=f"{sw}x{sh} -> {w}x{h} {fit}")
            elif not np.array_equal(ours, np.asarray(pil)):
                order_matters += 1
                assert np.abs(ours.astype(int) - np.asarray(pil, int)).max() == 1
    import PIL

    assert order_matters > 0 or int(PIL.__version__.split(".")[0]) < 13  # Pillow 13's own order differs
    grey = rng.integers(0, 256, (40, 30, 1), dtype=np.uint8)
    np.testing.assert_array_equal(resize_image(grey, (16, 16), "center_crop")[..., 0], resize_image(np.repeat(grey, 3, -1), (16, 16), "center_crop")[..., 0])
    with pytest.raises(Exception, match="fit = 'letterbox' is not a resize fit; use one of stretch, center_crop"):
        resize_image(grey, (8, 8), "letterbox")


def test_contract_records_resize_fit_and_alpha(exported):
    from tfcnn.config import ConfigError, from_dict

    contract = json.loads((exported["v1"] / "contract.json").read_text())
    assert {k: contract["input"][k] for k in ("resize", "fit", "alpha")} == {"resize": "bilinear", "fit": "stretch", "alpha": "over_black"}
    assert "ImageOps.fit" in contract["input"]["resize_detail"] and "horizontal pass then vertical" in contract["input"]["resize_detail"]
    base = {"name": "x", "data": {"source": "mnist"}, "model": {"name": "tiny_cnn"}}
    assert from_dict({**base, "export": {"fit": "center_crop"}}).export.fit == "center_crop"
    with pytest.raises(ConfigError, match=r"export.fit = 'crop' is not allowed; choose one of 'stretch', 'center_crop'"):
        from_dict({**base, "export": {"fit": "crop"}})


def test_golden_photos_are_small_real_pngs():
    from PIL import Image

    files = sorted((APP / PHOTOS).glob("*.png"))
    modes = {}
    for p in files:
        assert p.stat().st_size < 8_000, p
        with Image.open(p) as im:
            modes[im.mode] = modes.get(im.mode, 0) + 1
            assert min(im.size) >= 8 and im.size != (28, 28) and im.size != (16, 16), p
            assert not {"gamma", "icc_profile", "srgb", "chromaticity"} & set(im.info), f"{p}: colour chunks some decoders apply"
    assert {"RGB", "RGBA", "LA", "L", "P"} <= set(modes), modes


def test_missing_photos_are_refused(exported, tmp_path):
    app = copy_app(tmp_path / "android_demo")
    shutil.rmtree(app / PHOTOS)
    with pytest.raises(ExportError, match="has no PNG photos, so the app's resize could not be checked"):
        write_android_assets(exported["v1"], app, n_samples=1)


def test_serving_bytes_decode_is_within_one_step_of_the_reference():
    """The SavedModel's serving_bytes resize (TF ops, float32 weights) against the Python
    reference on the golden photos: never more than one step off, and rarely that."""
    import tensorflow as tf

    from tfcnn.data.images import load_image
    from tfcnn.export.wrapper import Geometry, decode_image_bytes

    g = Geometry(height=20, width=14, model_channels=3)
    for fit in ("stretch", "center_crop"):
        decode = tf.function(decode_image_bytes(g, fit))
        off = total = 0
        for path in sorted((APP / PHOTOS).glob("*.png")):
            got = decode(tf.constant(path.read_bytes())).numpy().astype(int)
            ref = load_image(path, (g.height, g.width), 3, fit).astype(int)
            assert got.shape == ref.shape and np.abs(got - ref).max() <= 1, (path.name, fit)
            off, total = off + int((got != ref).sum()), total + ref.size
        assert off < 0.05 * total, (fit, off, total)
        # an image at the model's size is passed through untouched
        same = load_image(next((APP / PHOTOS).glob("china_wide*.png")), (g.height, g.width), 3, fit)
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(same).save(buf, format="PNG")
        np.testing.assert_array_equal(decode(tf.constant(buf.getvalue())).numpy(), same)


def test_predict_on_a_version_honours_the_contracts_fit(exported, tmp_path):
    """`tfcnn predict VERSION_DIR` feeds each format what load_image makes with the contract's fit:
    a copy of v1 whose contract says center_crop (card row updated, as an export would write it)."""
    from tfcnn.data.images import load_image
    from tfcnn.export.formats import FORMATS
    from tfcnn.export.predict import predict_version

    crop = tmp_path / "tiny" / "1"
    shutil.copytree(exported["v1"], crop)
    contract = json.loads((crop / "contract.json").read_text())
    contract["input"]["fit"] = "center_crop"
    (crop / "contract.json").write_text(json.dumps(contract))
    card = json.loads((crop / "model_card.json").read_text())
    row = next(r for r in card["artifacts"] if r["path"] == "contract.json")
    row["sha256"], row["bytes"] = hashlib.sha256((crop / "contract.json").read_bytes()).hexdigest(), (crop / "contract.json").stat().st_size
    (crop / "model_card.json").write_text(json.dumps(card))

    files = sorted((APP / PHOTOS).glob("*.png"))
    h, w = contract["input"]["height"], contract["input"]["width"]
    runner = FORMATS["tflite_int8"].runner(crop, contract["artifacts"]["tflite_int8"], 1)
    want = np.asarray(runner.predict(np.stack([load_image(f, (h, w), 3, "center_crop") for f in files])))
    rows = predict_version(crop, files, format="tflite_int8", top_k=3)
    for row, probs in zip(rows, want):
        assert [t["class_id"] for t in row["top_k"]] == list(np.argsort(-probs, kind="stable")[:3])
        np.testing.assert_allclose([t["probability"] for t in row["top_k"]], np.sort(probs)[::-1][:3], atol=1e-6)
    assert predict_version(exported["v1"], files, format="tflite_int8", top_k=3) != rows  # stretch differs
