"""The detection task through the whole chain: generated shapes scenes -> RetinaNet-style detector
(fit engine) and single-object localiser (tape engine) -> COCO evaluation -> every export format
-> verify by mAP per format and MediaPipe's ObjectDetector -> the report. One small detector is
trained per module and shared; the config refusals need no training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tfcnn.config import from_dict
from tfcnn.errors import ConfigError

SMALL_DETECTOR = {
    "backbone": "compact_cnn",
    "backbone_options": {"filters": [8, 16, 32, 48], "convs": [1, 1, 1, 1]},
    "levels": [3, 4],
    "anchor_size": 2.5,
    "fpn_channels": 32,
    "head_convs": 1,
    "head_channels": 32,
}


def _cfg(root: Path, name: str, **over) -> dict:
    d = {
        "name": name,
        "task": "detection",
        "out_dir": str(root / name),
        "data": {
            "source": "shapes",
            "batch_size": 16,
            "scenes": {"size": 64, "num_train": 640, "num_test": 64, "max_objects": 3},
            "augment": {"flip": True},
        },
        "model": {"name": "retinanet", "options": dict(SMALL_DETECTOR)},
        "train": {"engine": "fit", "epochs": 8, "learning_rate": 5e-3, "schedule": "cosine", "tensorboard": False},
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
def detector(tmp_path_factory):
    """A small detector trained on shapes scenes, exported to every format and verified."""
    from tfcnn.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("detection")
    cfg = from_dict(_cfg(root, "det"))
    summary = run_pipeline(cfg, root / "det")
    return root, summary


# --------------------------------------------------------------------------- refusals (no training)


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"model": {"name": "compact_cnn"}}, "model.name = 'compact_cnn' is not a detector"),
        ({"train__label_smoothing": 0.1}, "train.label_smoothing applies to classifiers"),
        ({"data": {"source": "coco:/nowhere/annotations.json"}}, "set data.image_size"),
        ({"detection__negative_iou": 0.7}, "detection.negative_iou = 0.7 > detection.positive_iou = 0.5"),
        ({"data__augment": {"rotate": 0.1}}, "rotate"),
    ],
)
def test_bad_detection_configs_are_one_line_before_any_io(tmp_path, over, fragment):
    from tfcnn.pipeline import validate

    with pytest.raises(ConfigError) as err:
        validate(from_dict(_cfg(tmp_path, "bad", **over)))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_classifier_on_box_labels_is_refused_naming_both(tmp_path):
    """task = classification on a scene source: the data gives boxes, the task wants classes."""
    from tfcnn.pipeline import train_stage

    d = _cfg(tmp_path, "cls_on_boxes", task="classification", model={"name": "tiny_cnn"})
    d["data"]["scenes"]["num_train"] = 40
    with pytest.raises(ConfigError, match="learns from classes but .* gives boxes"):
        train_stage(from_dict(d), tmp_path / "cls_on_boxes")


# --------------------------------------------------------------------------- the shared detector


def test_training_logs_both_loss_parts_and_evaluation_is_coco(detector):
    import csv

    from tfcnn.run import Evaluation, Run

    root, summary = detector
    run = Run.open(root / "det")
    with open(run.path("history")) as f:
        cols = next(csv.reader(f))
    assert {"class_loss", "box_loss", "val_class_loss", "val_box_loss"} <= set(cols)
    m = summary["metrics"]
    for key in ("test_map", "test_map_50", "test_map_75", "test_ar_1", "test_ar_10", "test_ar_100", "test_loss"):
        assert key in m and m[key] is not None and np.isfinite(m[key]), key
    assert m["test_map_50"] > 0.3, m  # shapes are easy: a few epochs find most of them
    ev = run.read(Evaluation)
    assert ev.task == "detection" and len(ev.details["per_class"]) == 3
    pred = np.load(run.path("predictions"))
    assert pred["boxes"].shape[1:] == (100, 4) and pred["ground_truth"].shape[1:] == (3, 5)
    assert pred["correct_50"].dtype == bool and len(pred["gallery"]) == len(pred["gallery_images"])


def test_every_format_passes_verify_by_map(detector):
    root, summary = detector
    ver = summary["verification"]
    assert ver["passed"], ver["failures"]
    formats = ver["formats"]
    assert {"savedmodel", "tflite_float32", "tflite_float16", "tflite_dynamic", "tflite_int8", "onnx", "coreml"} <= set(formats)
    keras_map50 = ver["keras"]["map_50"]
    for name, row in formats.items():
        assert row["passed"], (name, row)
        # verify's limit is a drop; on 64 scenes int8 has also scored 3.7 points *above* Keras
        # (CI, an AMD host), so upwards only a gross disagreement is refused here
        assert keras_map50 - row["map_50"] <= 0.02 + 1e-9, (name, row)
        assert abs(row["map_50"] - keras_map50) <= 0.08, (name, row)
    for exact in ("savedmodel", "tflite_float32", "onnx"):
        assert formats[exact]["box_agreement"] >= 0.98 and abs(formats[exact]["map_50"] - keras_map50) <= 0.005
    assert "mAP@0.5" in (Path(summary["export"]) / "verification.md").read_text()


def _quantized_tail(tflite_file: Path) -> list[str]:
    """Names of the int8 / uint8 tensors inside the post-processing scope of a TFLite file."""
    from tfcnn.export.tflite import interpreter
    from tfcnn.tasks.postprocess import SCOPE

    it = interpreter(tflite_file)
    return [d["name"] for d in it.get_tensor_details() if SCOPE in d["name"] and d["dtype"] in (np.int8, np.uint8)]


def test_int8_scores_are_not_on_a_quantization_grid(detector):
    """The post-processing of the full-integer file runs in float, scores included: a LOGISTIC
    op there would be wrapped in int8 (fixed scale 1/256) and tie the scores that rank detections."""
    root, summary = detector
    assert _quantized_tail(Path(summary["export"]) / "tflite" / "model_int8.tflite") == []


def test_mediapipe_object_detector_reads_the_tflite_models(detector):
    root, summary = detector
    clients = summary["verification"]["mediapipe"]
    for variant in ("tflite_float32", "tflite_int8"):
        m = clients[variant]
        assert m["passed"] is True, m
        assert m["client"].endswith("ObjectDetector") and m["checked"] > 0
        assert m["labels_from_metadata"] is True, m  # a trained detector detects something, named from labels.txt


def test_contract_and_card_describe_detections(detector):
    import json

    root, summary = detector
    vd = Path(summary["export"])
    contract = json.loads((vd / "contract.json").read_text())
    out = contract["output"]
    assert out["kind"] == "detection" and out["tensors"] == ["boxes", "classes", "scores", "num_detections"]
    assert out["max_detections"] == 100 and out["score_threshold"] == 0.05
    card = (vd / "model_card.md").read_text()
    assert "object detector" in card and "num_detections" in card


def test_a_broken_format_fails_verify_by_map(detector, tmp_path):
    """Scores scaled down past the threshold would pass an 'it runs' check; the mAP drop fails it."""
    from tfcnn.tasks import get_task
    from tfcnn.run import Run

    root, summary = detector
    run = Run.open(root / "det")
    task = get_task("detection", run.config(), run)
    from tfcnn.data import bundle_for
    from tfcnn.models.saved import load_trained_model

    x, y = bundle_for(run).arrays["test"]
    ref = task.reference(load_trained_model(run), x)
    row = task.compare(ref, ref, y)
    assert row["box_agreement"] == 1.0 and row["map_50"] == row["keras_map"] or row["map"] == row["keras_map"]
    keras50 = task.reference_score(ref, y)
    limits = task.format_limits({"max_abs_diff": 1e-4})
    assert task.failures(row, limits, keras50) == []
    broken = {k: v.copy() for k, v in ref.items()}
    broken["boxes"][..., 2:] = broken["boxes"][..., :2] + 0.5 * (broken["boxes"][..., 2:] - broken["boxes"][..., :2])
    fails = task.failures(task.compare(broken, ref, y), limits, keras50)
    assert any("mAP@0.5" in f for f in fails) and any("box agreement" in f for f in fails)
    nan = {k: v.copy() for k, v in ref.items()}
    nan["scores"][0, 0] = np.nan
    assert any("non-finite" in f for f in task.failures(task.compare(nan, ref, y), limits, keras50))


def test_report_has_the_detection_sections(detector):
    root, summary = detector
    html = Path(summary["report"]).read_text()
    assert '<section id="detection">' in html and '<section id="export">' in html
    assert "mAP" in html and html.count("<img") >= 3


# --------------------------------------------------------------------------- the localiser


def test_single_object_localiser_with_the_tape_engine(tmp_path):
    """At most one object per scene (some scenes empty): the localiser's box + class + "no object"
    head trains with the tape engine and exports with its one-row outputs."""
    from tfcnn.pipeline import run_pipeline

    d = _cfg(
        tmp_path, "loc", model={"name": "localizer", "options": {"backbone": "compact_cnn",
                                                              "backbone_options": {"filters": [8, 16, 32], "convs": [1, 1, 1]}}},
    )
    d["data"]["scenes"].update(min_objects=0, max_objects=1, num_train=2000)
    d["data"]["augment"] = {}  # measured: 0.89 mAP@0.5 without flips, 0.43 with them at this budget
    d["train"].update(engine="tape", epochs=10, early_stopping={"enabled": False})
    # tflite_int8: the class logits and box head stay float (Detection.int8_float_names): int8,
    # they lost 44 and then 3 points of mAP@0.5 (logits clipped to the sigmoid's [0, 1] scale)
    d["export"]["formats"] = ["savedmodel", "tflite_float32", "tflite_int8", "onnx"]
    d["report"] = False
    summary = run_pipeline(from_dict(d), tmp_path / "loc")
    m = summary["metrics"]
    assert np.isfinite(m["test_map_50"]) and m["test_map_50"] > 0.5, m  # measured 0.89
    ver = summary["verification"]
    assert ver["passed"], ver["failures"]
    assert ver["formats"]["tflite_float32"]["mean_detections"] <= 1.0
    assert ver["formats"]["tflite_int8"]["passed"] and ver["formats"]["tflite_int8"]["box_agreement"] >= 0.95
    assert _quantized_tail(Path(summary["export"]) / "tflite" / "model_int8.tflite") == []
