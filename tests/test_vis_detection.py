"""The detection report: figures and HTML drawn from a fake run's saved arrays alone (no model, no
training), so the report side is checked in seconds and independently of the detector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

NAMES = ["circle", "square", "triangle"]
H = W = 32


def _arrays() -> dict[str, np.ndarray]:
    """Four scenes, D = 5 detection slots, M = 3 label rows; gallery = scenes 0, 2, 3."""
    n, d, m = 4, 5, 3
    boxes = np.zeros((n, d, 4), np.float32)
    classes = np.zeros((n, d), np.float32)
    scores = np.zeros((n, d), np.float32)
    num = np.zeros(n, np.float32)
    correct = np.zeros((n, d), bool)
    gt = np.full((n, m, 5), -1.0, np.float32)
    # scene 0: two objects, both found (scores 0.9, 0.8) plus one low-score detection below the floor
    gt[0, :2] = [[0.1, 0.1, 0.4, 0.4, 0], [0.5, 0.5, 0.9, 0.9, 1]]
    boxes[0, :3] = [[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9], [0.0, 0.6, 0.2, 0.8]]
    classes[0, :3] = [0, 1, 2]
    scores[0, :3] = [0.9, 0.8, 0.1]
    correct[0, :2] = True
    num[0] = 3
    # scene 1 (not in the gallery): nothing
    # scene 2: one object missed, one false positive
    gt[2, :1] = [[0.2, 0.2, 0.6, 0.6, 2]]
    boxes[2, :1] = [[0.6, 0.6, 0.95, 0.95]]
    classes[2, :1] = [1]
    scores[2, :1] = [0.7]
    num[2] = 1
    # scene 3: three objects, two found; a stale box beyond num_detections must not be drawn
    gt[3] = [[0.05, 0.05, 0.3, 0.3, 0], [0.4, 0.4, 0.7, 0.7, 1], [0.7, 0.1, 0.95, 0.35, 2]]
    boxes[3, :3] = [[0.05, 0.05, 0.3, 0.3], [0.4, 0.4, 0.7, 0.7], [0.1, 0.6, 0.3, 0.9]]
    classes[3, :3] = [0, 1, 0]
    scores[3, :3] = [0.95, 0.6, 0.9]
    correct[3, :2] = True
    num[3] = 2
    gallery = np.array([0, 2, 3], np.int64)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (len(gallery), H, W, 1), dtype=np.uint8)
    return {"boxes": boxes, "classes": classes, "scores": scores, "num_detections": num, "ground_truth": gt,
            "correct_50": correct, "gallery": gallery, "gallery_images": images}


def _evaluation(pr_curves):
    from tfcnn.run import Evaluation

    headline = {"test_map": 0.4321, "test_map_50": 0.7654, "test_map_75": 0.3456, "test_map_small": None,
                "test_map_medium": 0.41, "test_map_large": 0.52, "test_ar_1": 0.3, "test_ar_10": 0.55, "test_ar_100": 0.6,
                "test_loss": 1.2345, "num_test": 4}
    per_class = [
        {"class": "circle", "ap": 0.61, "ap50": 0.91, "gt": 3, "detections": 3},
        {"class": "square", "ap": 0.45, "ap50": 0.8, "gt": 2, "detections": 3},
        {"class": "triangle", "ap": None, "ap50": None, "gt": 0, "detections": 1},
    ]
    details = {"per_class": per_class, "coco": {"map": 0.4321}, "pr_curves": pr_curves, "detector": "retinanet",
               "postprocess": {"score_threshold": 0.05, "nms_iou": 0.5, "max_detections": 5}, "mean_detections": 1.5,
               "training": {"best_epoch": 3, "stopped_epoch": None, "stop_reason": "epochs", "engine": "fit"}}
    return Evaluation(task="detection", num_test=4, headline=headline, details=details, files={"predictions": "predictions.npz"})


def _curves() -> list:
    r = np.linspace(0, 1, 101)
    return [list(np.clip(1.0 - 0.5 * r, 0, 1)), list(np.where(r <= 0.8, 0.9, -1.0)), [-1.0] * 101]  # triangle: no ground truth


def _make_run(root: Path, pr_curves, export: bool = False):
    from tfcnn.config import from_dict
    from tfcnn.run import Run

    run = Run.create(root)
    run.save_config(from_dict({"task": "detection", "model": {"name": "retinanet"}, "data": {"source": "shapes"}}))
    (root / "data.json").write_text(json.dumps({"source": "shapes", "class_names": NAMES, "input_shape": [H, W, 1],
                                                "num_train": 8, "num_val": 2, "num_test": 4}))
    run.write(_evaluation(pr_curves))
    np.savez(run.path("predictions"), **_arrays())
    if export:
        vdir = root / "export" / "1"
        vdir.mkdir(parents=True)
        row = {"passed": True, "map_50": 0.7654, "map": 0.4321, "keras_map": 0.4321, "box_agreement": 0.9987,
               "mean_detections": 1.5, "count_agreement": 1.0, "bytes": 2_100_000, "latency_ms_median": 3.21, "failures": []}
        ver = {"samples": 4, "passed": False, "keras": {"map_50": 0.7654},
               "formats": {"savedmodel": row,
                           "tflite_int8": {**row, "passed": False, "map_50": 0.7011, "box_agreement": 0.9123,
                                           "failures": ["box agreement with Keras 91.23% < 98.00%"]}},
               "failures": ["tflite_int8: box agreement with Keras 91.23% < 98.00%"]}
        (vdir / "verification.json").write_text(json.dumps(ver))
        (root / "exports.json").write_text(json.dumps([str(vdir)]))
    return run


def test_report_has_the_detection_sections(tmp_path):
    from tfcnn.vis.report import build_report

    run = _make_run(tmp_path / "det", _curves(), export=True)
    html = build_report(run).read_text()
    for sid in ("summary", "config", "training", "detection", "export"):
        assert f'<section id="{sid}">' in html, sid
    assert '<section id="confusion">' not in html and "Grad-CAM" not in html
    detection = html.split('<section id="detection">')[1].split("</section>")[0]
    for text in ("0.4321", "0.7654", "0.3456", "1.2345", "retinanet", "AP@[.5:.95]", "circle", "0.61", "0.91", "triangle"):
        assert text in detection, text
    assert detection.count("<img") == 3  # PR curves, AP bars, gallery
    export = html.split('<section id="export">')[1].split("</section>")[0]
    for text in ("tflite_int8", "0.7011", "0.9987", "Keras mAP", "box agreement with Keras 91.23% &lt; 98.00%", "FAILED"):
        assert text in export, text


def test_missing_pr_curves_is_a_note(tmp_path):
    from tfcnn.vis import detection as det_vis
    from tfcnn.vis.report import build_report

    run = _make_run(tmp_path / "nopr", None)
    figs = det_vis.figures(run, run.read_optional(type(_evaluation(None))))
    assert isinstance(figs["pr_curves"], str) and "pr_curves" in figs["pr_curves"]
    assert isinstance(figs["class_ap"], Figure) and isinstance(figs["gallery"], Figure)
    html = build_report(run).read_text()
    detection = html.split('<section id="detection">')[1].split("</section>")[0]
    assert "Not available:" in detection and "has no pr_curves" in detection
    assert detection.count("<img") == 2
    assert "not exported yet" in html


def test_pr_curves_layouts():
    from tfcnn.vis.detection import pr_curves

    listed = pr_curves(_curves(), NAMES)
    assert sorted(listed) == [0, 1]  # the all -1 class is left out
    assert listed[1][-1] == 0.0 and listed[1][0] == pytest.approx(0.9)  # -1 past the last recall reached -> 0
    by_name = pr_curves({"square": _curves()[1], "circle": None}, NAMES)
    assert sorted(by_name) == [1]
    transposed = pr_curves(np.asarray(_curves()).T.tolist(), NAMES)
    assert sorted(transposed) == [0, 1]
    assert pr_curves(None, NAMES) == {} and pr_curves([None, [], "x"], NAMES) == {}


def test_boxes_figure_draws_one_rectangle_per_box():
    from tfcnn.vis.detection import boxes_figure

    arrays = _arrays()
    fig = boxes_figure(arrays, NAMES, floor=0.3)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3
    rects = [[p for p in ax.patches if isinstance(p, Rectangle)] for ax in panels]
    # scene 0: 2 gt + 2 detections (0.1 below the floor); scene 2: 1 + 1; scene 3: 3 + 2 (the third slot is past num_detections)
    assert [len(r) for r in rects] == [4, 2, 5]
    dashed = [sum(p.get_linestyle() == "--" for p in r) for r in rects]
    assert dashed == [2, 1, 3]
    red = [sum(tuple(p.get_edgecolor()[:3]) == (0xdc / 255, 0x26 / 255, 0x26 / 255) for p in r) for r in rects]
    assert red == [0, 1, 0]
    assert [ax.get_title() for ax in panels] == ["#0: 2 obj, 2 det, 0 err", "#2: 1 obj, 1 det, 2 err", "#3: 3 obj, 2 det, 1 err"]
    texts = [t.get_text() for t in panels[0].texts]
    assert texts == ["circle 0.90", "square 0.80"]
    assert "6 objects" in fig.get_suptitle() and "3 errors" in fig.get_suptitle()
    # the floor decides what is drawn: at 0 the low-score detection of scene 0 appears too
    low = boxes_figure(arrays, NAMES, floor=0.0)
    assert len([p for p in low.axes[0].patches if isinstance(p, Rectangle)]) == 5


def test_figures_say_what_they_show(tmp_path):
    from tfcnn.run import Evaluation
    from tfcnn.vis import detection as det_vis

    run = _make_run(tmp_path / "figs", _curves())
    figs = det_vis.figures(run, run.read_optional(Evaluation))
    assert set(figs) == set(det_vis.FIGURES) and all(isinstance(f, Figure) for f in figs.values())
    ax = figs["pr_curves"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["circle (AP@0.5 0.910)", "square (AP@0.5 0.800)"]
    assert any("triangle" in t.get_text() for t in ax.texts)  # the class without a curve is named
    bars = figs["class_ap"].axes[0]
    assert len(bars.patches) == 6 and sum(t.get_text() == "n/a" for t in bars.texts) == 2
    (tmp_path / "figs" / "predictions.npz").unlink()
    gone = det_vis.figures(run, run.read_optional(Evaluation))
    assert isinstance(gone["gallery"], str) and "predictions.npz is missing" in gone["gallery"]


def test_unexpected_layouts_cost_a_figure_not_the_report(tmp_path):
    from tfcnn.run import Evaluation
    from tfcnn.vis import detection as det_vis

    run = _make_run(tmp_path / "odd", _curves())
    rec = run.read_optional(Evaluation)
    rec.details["per_class"] = [{"class": "circle", "ap": "high"}]  # not a number: drawn as n/a
    arrays = _arrays()
    arrays["gallery"] = np.array([0, 9])
    np.savez(run.path("predictions"), **arrays)
    figs = det_vis.figures(run, rec)
    assert isinstance(figs["class_ap"], Figure)
    assert isinstance(figs["gallery"], str) and "outside the 4 saved test scenes" in figs["gallery"]
