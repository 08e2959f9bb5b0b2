"""The segmentation task through the whole chain: shapes scenes with per-pixel masks -> UNet
(fit engine) -> Dice / IoU evaluation -> every export format -> verify by pixel agreement and
mean IoU -> the report. One small UNet is trained per module and shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tfcnn.config import from_dict
from tfcnn.errors import ConfigError


def _cfg(root: Path, name: str, **over) -> dict:
    d = {
        "name": name,
        "task": "segmentation",
        "out_dir": str(root / name),
        "data": {
            "source": "shapes",
            "batch_size": 16,
            "scenes": {"size": 64, "num_train": 600, "num_test": 48, "max_objects": 3},
            "augment": {"flip": True},
        },
        "model": {"name": "unet", "options": {"depth": 2, "filters": 8}},
        "train": {"engine": "fit", "epochs": 5, "learning_rate": 5e-3, "schedule": "cosine", "tensorboard": False},
        "export": {"root": str(root / "export"), "representative_samples": 48, "latency_runs": 3},
        "report": True,
    }
    for key, value in over.items():
        section, _, leaf = key.partition("__")
        if leaf:
            d.setdefault(section, {})[leaf] = value
        else:
            d[section] = value
    return d


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    from tfcnn.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("segmentation")
    return root, run_pipeline(from_dict(_cfg(root, "seg")), root / "seg")


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"model": {"name": "compact_cnn"}}, "model.name = 'compact_cnn' does not segment"),
        ({"segmentation__class_weights": [1.0, -2.0]}, "segmentation.class_weights"),
        ({"data__augment": {"cutout": 0.2}}, "cutout"),
    ],
)
def test_bad_segmentation_configs_are_one_line_before_any_io(tmp_path, over, fragment):
    from tfcnn.pipeline import validate

    with pytest.raises(ConfigError) as err:
        validate(from_dict(_cfg(tmp_path, "bad", **over)))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_scenes_give_masks_for_segmentation(tmp_path):
    cfg = from_dict(_cfg(tmp_path, "auto"))
    assert cfg.data.scenes.labels == "masks"  # "auto" follows the task


def test_training_and_evaluation_report_iou_and_dice(segmenter):
    import csv

    from tfcnn.run import Evaluation, Run

    root, summary = segmenter
    run = Run.open(root / "seg")
    with open(run.path("history")) as f:
        cols = next(csv.reader(f))
    assert {"mean_iou", "pixel_accuracy", "val_mean_iou"} <= set(cols)
    m = summary["metrics"]
    for key in ("test_mean_iou", "test_mean_dice", "test_pixel_accuracy", "test_loss"):
        assert m[key] is not None and np.isfinite(m[key]), key
    assert m["test_mean_dice"] > 0.5, m  # shapes are easy
    ev = run.read(Evaluation)
    assert [r["class"] for r in ev.details["per_class"]] == ["background", "circle", "square", "triangle"]
    cm = np.asarray(ev.details["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == 48 * 64 * 64


def test_every_format_passes_verify_by_pixel_agreement(segmenter):
    root, summary = segmenter
    ver = summary["verification"]
    assert ver["passed"], ver["failures"]
    formats = ver["formats"]
    assert {"savedmodel", "tflite_float32", "tflite_int8", "onnx", "coreml"} <= set(formats)
    for name, row in formats.items():
        assert row["passed"], (name, row)
        floor = 0.98 if name in ("tflite_int8", "tflite_dynamic") else 0.995
        assert row["pixel_agreement"] >= floor, (name, row)
    for exact in ("savedmodel", "tflite_float32", "onnx"):
        assert formats[exact]["max_abs_diff"] < 1e-4 and formats[exact]["pixel_agreement"] > 0.9999


def test_a_broken_format_fails_verify(segmenter):
    from tfcnn.data import bundle_for
    from tfcnn.models.saved import load_trained_model
    from tfcnn.run import Run
    from tfcnn.tasks import get_task

    root, _ = segmenter
    run = Run.open(root / "seg")
    task = get_task("segmentation", run.config(), run)
    x, y = bundle_for(run).arrays["test"]
    ref = task.reference(load_trained_model(run), x)
    keras_iou = task.reference_score(ref, y)
    limits = task.format_limits({"max_abs_diff": 1e-4})
    assert task.failures(task.compare(ref, ref, y), limits, keras_iou) == []
    shifted = {k: np.roll(v, 3, axis=2) for k, v in ref.items()}  # masks three pixels off
    fails = task.failures(task.compare(shifted, ref, y), limits, keras_iou)
    assert any("pixel agreement" in f for f in fails) and any("mean IoU" in f for f in fails)
    nan = {k: v.astype(np.float32).copy() for k, v in ref.items()}
    nan["class_probabilities"][0, 0, 0, 0] = np.nan
    assert any("non-finite" in f for f in task.failures(task.compare(nan, ref, y), limits, keras_iou))


def test_report_has_the_segmentation_sections(segmenter):
    root, summary = segmenter
    html = Path(summary["report"]).read_text()
    assert '<section id="segmentation">' in html and '<section id="export">' in html
    assert "mean IoU" in html and html.count("<img") >= 2


def test_segment_errors_bench_regenerates_the_test_scenes_and_breaks_errors_down_by_object(segmenter):
    """bench/segment_errors.py on this run: the same test scenes (its fg Dice is the evaluation's),
    every object counted once in each breakdown, and every Dice a finite fraction."""
    import json
    import subprocess
    import sys

    root, summary = segmenter
    script = Path(__file__).resolve().parents[1] / "bench" / "segment_errors.py"
    out = subprocess.run([sys.executable, str(script), str(root / "seg")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["fg_dice"] == pytest.approx(summary["metrics"]["test_mean_dice"], abs=1e-3)
    n = r["object_accuracy"]["objects"]
    assert n > 48 and sum(v["objects"] for v in r["by_objects_per_scene"].values()) == n
    assert sum(v["objects"] for v in r["by_side_px"].values()) == n
    assert sum(v["objects"] for v in r["by_box_overlap"].values()) == n
    assert set(r["by_class"]) == {"circle", "square", "triangle"}
    for key in ("binary_dice", "vote_ceiling_fg_dice", "flip_tta_fg_dice"):
        assert 0 < r[key] <= 1, key
    assert all(0 < v <= 1 for v in r["pooled_vote_fg_dice"].values()) and "CPUs" in r["machine"]
    assert r["test_time_flip"] is False and "single_pass_fg_dice" not in r


def test_an_untimed_format_says_so_instead_of_printing_nan():
    """CoreML off macOS has no latency here: verify's line must not print "nan ms" as a figure."""
    import tfcnn.tasks  # noqa: F401  (registers the tasks)
    from tfcnn.tasks.base import TASKS

    task = TASKS.get_or_raise("segmentation")
    row = {"mean_iou": 0.7, "mean_dice": 0.8, "pixel_agreement": 1.0, "max_abs_diff": 1e-6}
    assert task.verify_line({**row, "latency_ms_median": 1.5}).endswith("p50 1.500 ms")
    for missing in (float("nan"), None):
        line = task.verify_line({**row, "latency_ms_median": missing})
        assert "nan" not in line.lower() and line.endswith("p50 not timed"), line


def _tiny_segmenter():
    from tfcnn.config import ModelConfig
    from tfcnn.models import build_model

    return build_model(ModelConfig(name="unet", options={"depth": 2, "filters": 4, "convs": 1}), (32, 32, 1), 3)


def test_test_time_flip_averages_the_mirror_logits_and_is_exactly_mirror_equivariant():
    """forward() with segmentation.test_time_flip: (f(x) + mirror(f(mirror(x)))) / 2; a mirrored
    image then gets exactly the mirrored output, which a plain UNet does not."""
    import copy
    import dataclasses

    import tensorflow as tf

    from tfcnn.config import SegmentationConfig
    from tfcnn.tasks import get_task

    model = _tiny_segmenter()
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1)).astype(np.float32))
    plain = get_task("segmentation")
    tta = copy.copy(plain)
    tta.seg = dataclasses.replace(SegmentationConfig(), test_time_flip=True)
    f = model(x, training=False).numpy()
    mirror = model(x[:, :, ::-1], training=False).numpy()[:, :, ::-1]
    np.testing.assert_array_equal(plain.forward(model, x).numpy(), f)
    np.testing.assert_allclose(tta.forward(model, x).numpy(), (f + mirror) / 2, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(tta.forward(model, x[:, :, ::-1]).numpy(), tta.forward(model, x).numpy()[:, :, ::-1])
    assert not np.allclose(plain.forward(model, x[:, :, ::-1]).numpy(), f[:, :, ::-1], atol=1e-3)
    p = tta.probabilities(model, x.numpy())
    np.testing.assert_allclose(p, tf.nn.softmax((f + mirror) / 2).numpy(), rtol=1e-5, atol=1e-6)
    assert tta.output_contract(["a", "b", "c"])["test_time_flip"] is True
    assert any("Test-time flip is on" in line for line in tta.card_limitations())
    assert not any("Test-time flip" in line for line in plain.card_limitations())


def test_test_time_flip_goes_into_every_format_and_verifies(segmenter, tmp_path):
    """The shared segmenter re-exported with segmentation.test_time_flip on (inference only, no
    retraining): every format passes verify against the flip-averaged Keras reference, the
    contract says so, and the float32 TFLite file itself is mirror-equivariant."""
    import dataclasses
    import json
    import shutil

    from ai_edge_litert.interpreter import Interpreter

    from tfcnn.export import export_run, verify_version
    from tfcnn.run import Run

    root, summary = segmenter
    shutil.copytree(root / "seg", tmp_path / "seg")
    run = Run.open(tmp_path / "seg")
    cfg = run.config()
    run.save_config(dataclasses.replace(cfg, segmentation=dataclasses.replace(cfg.segmentation, test_time_flip=True)))
    vd = export_run(run, name="seg_tta", root=tmp_path / "export")
    ver = verify_version(vd, samples=48, run=run)
    assert ver["passed"], ver["failures"]
    assert {"savedmodel", "tflite_float32", "tflite_int8", "onnx", "coreml"} <= set(ver["formats"])
    for exact in ("savedmodel", "tflite_float32", "onnx"):
        assert ver["formats"][exact]["pixel_agreement"] > 0.9999, exact
    assert json.loads((vd / "contract.json").read_text())["output"]["test_time_flip"] is True
    interp = Interpreter(model_path=str(vd / "tflite" / "model_float32.tflite"))
    interp.allocate_tensors()
    (inp,), outs = interp.get_input_details(), interp.get_output_details()
    mask_out = next(o for o in outs if len(o["shape"]) == 3)
    from tfcnn.data import bundle_for

    x, _ = bundle_for(run).arrays["test"]
    rgb = np.repeat(x[:1], 3, axis=-1) if x.shape[-1] == 1 else x[:1]
    rgb = np.round(rgb).astype(inp["dtype"])

    def mask(img):
        interp.set_tensor(inp["index"], img)
        interp.invoke()
        return interp.get_tensor(mask_out["index"])[0]

    np.testing.assert_array_equal(mask(rgb[:, :, ::-1].copy()), mask(rgb)[:, ::-1])
    # bench/segment_errors.py on the flip run: its figures include the flip, and it also gives the
    # one-pass Dice, which is the plain run's evaluation
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "bench" / "segment_errors.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "seg")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["test_time_flip"] is True and r["flip_tta_fg_dice"] == r["fg_dice"]
    assert r["single_pass_fg_dice"] == pytest.approx(summary["metrics"]["test_mean_dice"], abs=1e-3)
