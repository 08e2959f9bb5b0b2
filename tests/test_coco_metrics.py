"""COCO detection metrics: numpy re-implementation vs pycocotools, course values, NaN handling.

pycocotools is the reference: every scenario is evaluated by both and the 12 summary numbers, the
full ``eval["precision"]`` / ``eval["recall"]`` arrays and the per-class APs must agree to 1e-4.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest

from tfcnn.data import boxes as box_ops
from tfcnn.tasks.coco_metrics import (
    DetectionScores,
    box_agreement,
    evaluate_detections,
    interpolated_precision,
    match_detections,
    match_image,
    mean_ap,
)

H, W = 480, 640
TOL = 1e-4


# --------------------------------------------------------------------------- scene generation


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Boxes whose pixel sides are log-uniform in 6..400, so small, medium and large all occur."""
    h = np.exp(rng.uniform(np.log(6), np.log(400), n)) / H
    w = np.exp(rng.uniform(np.log(6), np.log(400), n)) / W
    h, w = np.minimum(h, 0.95), np.minimum(w, 0.95)
    y = rng.uniform(0, 1 - h)
    x = rng.uniform(0, 1 - w)
    return np.stack([y, x, y + h, x + w], axis=1)


def _jitter(rng: np.random.Generator, b: np.ndarray, scale: float) -> np.ndarray:
    hw = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]] * 2, axis=1)
    return np.clip(b + rng.normal(0, scale, b.shape) * hw, 0.0, 1.0)


def _straddling_pairs(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` pairs of concentric boxes, one just under and one just over a COCO size bound (32 or
    96 px), IoU ~0.76: a detection overlaps both, so which one it takes depends on the area range
    (COCO prefers the in-range ground truth even when the ignored one has the higher IoU)."""
    out = []
    for _ in range(n):
        side = rng.choice([30.0, 90.0]) * rng.uniform(0.97, 1.0)
        cy, cx = rng.uniform(0.3, 0.7, 2)
        for s in (side, side * 1.15):
            out.append([cy - s / 2 / H, cx - s / 2 / W, cy + s / 2 / H, cx + s / 2 / W])
    return np.asarray(out, np.float64).reshape(-1, 4)


def make_scene(
    seed: int,
    n_images: int = 40,
    num_classes: int = 5,
    max_objects: int = 12,
    p_detect: float = 0.8,
    p_duplicate: float = 0.15,
    false_positives: int = 4,
    jitter: float = 0.08,
    crowded_images: int = 2,
    straddle: int = 1,
    round_scores: bool = False,
    float_classes: bool = False,
):
    """Ground truth (padded [max_objects + 2 * straddle, 5]) and detections (padded, with a
    count) for a split.

    The last class never has ground truth (only false positives), a few images are empty, some
    objects are missed, some detected twice, ``straddle`` same-class pairs per image sit across a
    size bound, and ``crowded_images`` images get 120 high-scoring false positives of one class
    plus low-scoring true positives of it, so COCO's per-(image, class) cap of 100 cuts real hits.
    """
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for i in range(n_images):
        n = 0 if rng.random() < 0.1 else int(rng.integers(1, max_objects + 1))
        pairs = straddle if n else 0
        gb = np.concatenate([_random_boxes(rng, n), _straddling_pairs(rng, pairs)])
        gc = np.concatenate([rng.integers(0, num_classes - 1, n), np.repeat(rng.integers(0, num_classes - 1, pairs), 2)])
        gts.append(box_ops.pad_labels(gb, gc, max_objects + 2 * straddle))
        gb = gts[-1][: len(gc), :4].astype(np.float64)  # what the metrics see (float32 labels)
        found = rng.random(len(gc)) < p_detect
        db = [_jitter(rng, gb[found], jitter)]
        dc = [gc[found]]
        dup = found & (rng.random(len(gc)) < p_duplicate)
        db.append(_jitter(rng, gb[dup], jitter * 2))
        dc.append(gc[dup])
        nfp = int(rng.integers(0, false_positives + 1))
        db.append(_random_boxes(rng, nfp))
        dc.append(rng.integers(0, num_classes, nfp))
        s = [rng.random(len(gb[found]) + len(gb[dup]) + nfp)]
        if i < crowded_images and len(gc):
            c0 = gc[0]
            db += [_random_boxes(rng, 120), _jitter(rng, gb[gc == c0], 0.02)]
            dc += [np.full(120, c0), np.full(int(np.sum(gc == c0)), c0)]
            s += [rng.uniform(0.5, 1.0, 120), rng.uniform(0.0, 0.3, int(np.sum(gc == c0)))]
        b = np.concatenate(db)
        c = np.concatenate(dc)
        s = np.concatenate(s)
        if round_scores:
            s = np.round(s, 1)  # many ties: the stable sorts must agree with COCO's mergesort
        pad = int(rng.integers(0, 5))
        boxes = np.concatenate([b, rng.random((pad, 4))]).astype(np.float32)
        classes = np.concatenate([c, np.full(pad, 7)])
        classes = classes.astype(np.float32) if float_classes else classes.astype(np.int32)
        scores = np.concatenate([s, np.full(pad, 0.99)]).astype(np.float32)
        dets.append((boxes, classes, scores, len(b)))
    return gts, dets


# --------------------------------------------------------------------------- pycocotools reference


def coco_reference(gts, dets, num_classes: int):
    """pycocotools' COCOeval on the same data: (stats [12], precision, recall)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, results = [], [], []
    for i, (gt, (b, c, s, n)) in enumerate(zip(gts, dets)):
        images.append({"id": i + 1, "height": H, "width": W})
        rows = box_ops.valid_rows(gt)
        for box, cls in zip(box_ops.to_xywh_pixels(rows[:, :4], H, W), rows[:, 4]):
            anns.append({
                "id": len(anns) + 1, "image_id": i + 1, "category_id": int(cls) + 1,
                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": 0,
            })  # fmt: skip
        xywh = box_ops.to_xywh_pixels(np.asarray(b[:n], np.float64), H, W)
        for box, cls, score in zip(xywh, c[:n], s[:n]):
            results.append({
                "image_id": i + 1, "category_id": int(cls) + 1,
                "bbox": [float(v) for v in box], "score": float(score),
            })  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt_api = COCO()
        categories = [{"id": k + 1} for k in range(num_classes)]
        gt_api.dataset = {"images": images, "annotations": anns, "categories": categories}
        gt_api.createIndex()
        dt_api = gt_api.loadRes(results)
        ev = COCOeval(gt_api, dt_api, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats), ev.eval["precision"], ev.eval["recall"]


SCENARIOS = {
    "jittered": dict(seed=1),
    "tight_boxes_many_fp": dict(seed=2, jitter=0.02, false_positives=15),
    "loose_boxes_missed": dict(seed=3, jitter=0.2, p_detect=0.5, num_classes=3),
    "tied_float_classes": dict(seed=4, round_scores=True, float_classes=True, num_classes=4),
    "crowded": dict(seed=5, n_images=25, max_objects=30, crowded_images=4, p_duplicate=0.5),
}


@pytest.fixture(scope="module", params=list(SCENARIOS))
def scenario(request):
    kw = SCENARIOS[request.param]
    num_classes = kw.get("num_classes", 5)
    gts, dets = make_scene(**kw)
    ours = evaluate_detections(gts, dets, num_classes, H, W)
    ref = coco_reference(gts, dets, num_classes)
    return ours, ref


def test_summary_numbers_match_pycocotools(scenario) -> None:
    ours, (stats, _, _) = scenario
    expected = np.where(stats == -1, np.nan, stats)
    assert ours.stats == pytest.approx(expected, abs=TOL, nan_ok=True)
    # the scenes are built so that every area range is populated
    assert np.isfinite(ours.stats).all()


def test_precision_recall_arrays_match_pycocotools(scenario) -> None:
    ours, (_, precision, recall) = scenario
    assert ours.precision.shape == precision.shape
    assert np.abs(ours.precision - precision).max() < TOL
    assert np.abs(ours.recall - recall).max() < TOL


def test_per_class_ap_matches_pycocotools(scenario) -> None:
    ours, (_, precision, _) = scenario
    K = precision.shape[2]
    for k in range(K):
        p = precision[:, :, k, 0, 2]  # all areas, maxDets 100
        if (p > -1).any():
            assert ours.per_class_ap[k] == pytest.approx(p[p > -1].mean(), abs=TOL)
            assert ours.per_class_ap50[k] == pytest.approx(p[0].mean(), abs=TOL)
            assert ours.pr_precision[k] == pytest.approx(p[0], abs=TOL)
        else:
            assert math.isnan(ours.per_class_ap[k]) and math.isnan(ours.per_class_ap50[k])
    # the last class has detections but no ground truth: excluded (COCO's -1), shown as NaN
    assert math.isnan(ours.per_class_ap[K - 1])
    assert ours.num_ground_truth[K - 1] == 0 and ours.num_detections[K - 1] > 0
    assert ours.map == pytest.approx(mean_ap(ours.per_class_ap), abs=1e-12)


def test_to_dict_is_strict_json(scenario) -> None:
    ours, _ = scenario
    d = ours.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["per_class_ap"][-1] is None
    assert len(d["pr_curves"]["recall"]) == 101 and len(d["pr_curves"]["precision"][0]) == 101
    assert "precision" not in d
    assert d["per_class_counts"][-1]["ground_truth"] == 0 and d["per_class_counts"][-1]["detections"] > 0


def test_equal_iou_tie_goes_to_the_later_ground_truth() -> None:
    """COCO scans ground truths with ``>=``: on equal IoU the later one wins, which decides whether
    the next detection still finds a partner. Dyadic coordinates make the tie exact."""
    gt = box_ops.pad_labels([[0.25, 0.25, 0.5, 0.5], [0.25, 0.375, 0.5, 0.625]], [0, 0], 3)
    boxes = np.array([[0.25, 0.3125, 0.5, 0.5625], [0.25, 0.25, 0.5, 0.5]])  # IoU 0.6 with both; then A
    dets = [(boxes, np.array([0, 0]), np.array([0.9, 0.8]), 2)]
    ours = evaluate_detections([gt], dets, 1, H, W)
    stats, precision, _ = coco_reference([gt], dets, 1)
    assert ours.map_50 == pytest.approx(1.0) and stats[1] == pytest.approx(1.0)
    assert np.abs(ours.precision - precision).max() < TOL
    assert match_image(gt, *dets[0]).gt_of_detection.tolist() == [1, 0]


# --------------------------------------------------------------------------- course values


def test_interpolated_precision_course_example() -> None:
    # recalls 0.1..0.5
    got = interpolated_precision([0.95, 0.9, 0.93, 0.85, 0.8])
    assert got == pytest.approx([0.95, 0.93, 0.93, 0.85, 0.8])


def test_mean_ap_course_example_and_nan() -> None:
    assert mean_ap([0.85, 0.7, 0.9, 0.6, 0.75]) == pytest.approx(0.76)
    assert mean_ap([0.5, float("nan"), 1.0]) == pytest.approx(0.75)
    assert math.isnan(mean_ap([float("nan")]))


def test_iou_course_examples() -> None:
    big = np.array([[0.0, 0.0, 1.0, 1.0]])
    half = np.array([[0.0, 0.0, 0.5, 1.0]])
    assert box_ops.iou(big, half)[0, 0] == pytest.approx(0.5)
    a = np.array([[0.0, 0.0, 0.4, 0.4]])
    b = np.array([[0.0, 0.2, 0.4, 0.6]])  # equal boxes overlapping by half their area
    assert box_ops.iou(a, b)[0, 0] == pytest.approx(1 / 3)
    assert box_ops.iou(a, np.array([[0.5, 0.5, 0.9, 0.9]]))[0, 0] == 0.0


def _perfect(gts):
    dets = []
    for gt in gts:
        rows = box_ops.valid_rows(gt)
        dets.append((rows[:, :4], rows[:, 4], np.linspace(1.0, 0.5, len(rows)), len(rows)))
    return dets


def test_perfect_detections_score_one() -> None:
    gts, _ = make_scene(seed=7, num_classes=4)
    s = evaluate_detections(gts, _perfect(gts), 4, H, W)
    for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "ar_100"):
        assert getattr(s, key) == pytest.approx(1.0), key
    assert np.nanmin(s.per_class_ap) == pytest.approx(1.0)


def test_no_detections_score_zero() -> None:
    gts, _ = make_scene(seed=8, num_classes=4)
    empty = [(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0)] * len(gts)
    s = evaluate_detections(gts, empty, 4, H, W)
    assert s.map == 0.0 and s.map_50 == 0.0 and s.ar_100 == 0.0
    assert math.isnan(s.per_class_ap[3])  # no ground truth of class 3 either


def test_nothing_at_all_is_nan_not_zero() -> None:
    gts = [np.full((3, 5), -1.0, np.float32)] * 2
    dets = [(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0)] * 2
    s = evaluate_detections(gts, dets, 2, H, W)
    assert math.isnan(s.map) and json.loads(json.dumps(s.to_dict()))["map"] is None


# --------------------------------------------------------------------------- failures


def test_nan_score_raises_naming_the_image() -> None:
    gts, dets = make_scene(seed=9, n_images=5)
    b, c, s, n = dets[3]
    s = s.copy()
    s[0] = np.nan
    dets[3] = (b, c, s, n)
    with pytest.raises(ValueError, match="image 3"):
        evaluate_detections(gts, dets, 5, H, W)


def test_nan_box_raises_naming_the_image() -> None:
    gts, dets = make_scene(seed=9, n_images=5)
    b, c, s, n = dets[2]
    b = b.copy()
    b[0, 1] = np.nan
    dets[2] = (b, c, s, n)
    with pytest.raises(ValueError, match="image 2"):
        evaluate_detections(gts, dets, 5, H, W)


def test_nan_past_count_is_ignored_and_bad_class_raises() -> None:
    gts, dets = make_scene(seed=9, n_images=5)
    b, c, s, n = dets[1]
    s = s.copy()
    s[n:] = np.nan  # padding rows are not looked at
    dets[1] = (b, c, s, n)
    evaluate_detections(gts, dets, 5, H, W)
    c = c.copy()
    c[0] = 5
    dets[1] = (b, c, s, n)
    with pytest.raises(ValueError, match="image 1.*class id 5"):
        evaluate_detections(gts, dets, 5, H, W)


# --------------------------------------------------------------------------- matching helpers


def test_match_detections_marks_right_wrong_and_missed() -> None:
    gt = box_ops.pad_labels([[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9], [0.0, 0.6, 0.3, 0.9]], [0, 1, 0], 5)
    boxes = np.array([
        [0.1, 0.1, 0.5, 0.52],  # matches gt 0
        [0.1, 0.1, 0.5, 0.5],   # duplicate of gt 0, lower score -> false positive
        [0.6, 0.6, 0.9, 0.9],   # right box, wrong class -> false positive
        [0.0, 0.0, 0.1, 0.1],   # padding row past count
    ])  # fmt: skip
    classes, scores = np.array([0, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.6])
    m = match_image(gt, boxes, np.array([0, 0, 0, 0]), scores, 3)
    assert m.gt_of_detection.tolist() == [0, -1, -1]
    assert m.true_positive.tolist() == [True, False, False]
    assert m.detection_of_gt.tolist() == [0, -1, -1, -1, -1]
    assert m.missed.tolist() == [False, True, True, False, False]  # padding rows are not missed
    assert m.iou_of_detection[0] == pytest.approx(0.4 * 0.4 / (0.4 * 0.42))
    # same class for the third box: now it is right; a lower threshold would not change the duplicate
    m = match_image(gt, boxes, classes, scores, 3)
    assert m.gt_of_detection.tolist() == [0, -1, 1] and m.detection_of_gt.tolist() == [0, 2, -1, -1, -1]
    # the batch form: bool [n_images, padded D], rows past the count False
    batch = match_detections([gt, gt], [(boxes, classes, scores, 3), (boxes, classes, scores, 0)], iou=0.5)
    assert batch.tolist() == [[True, False, True, False], [False] * 4]
    # the higher-scoring detection wins a contested object even with a lower IoU
    m = match_image(gt, boxes[[1, 0]], np.array([0, 0]), np.array([0.1, 0.9]), 2)
    assert m.gt_of_detection.tolist() == [-1, 0]


def test_box_agreement() -> None:
    _, dets = make_scene(seed=11, n_images=10)
    assert box_agreement(dets, dets, score_floor=0.0) == 1.0
    # B: half of A's boxes removed, the rest nudged well inside IoU 0.9
    half = []
    for b, c, s, n in dets:
        keep = np.arange(n) % 2 == 0
        half.append((b[:n][keep] + 1e-4, c[:n][keep], s[:n][keep], int(keep.sum())))
    n_a = sum(n for *_, n in dets)
    n_b = sum(n for *_, n in half)
    assert box_agreement(dets, half, score_floor=0.0) == pytest.approx(n_b / n_a)
    assert box_agreement(half, dets, score_floor=0.0) == 1.0
    assert box_agreement(half, dets, score_floor=0.0, symmetric=True) == pytest.approx(n_b / n_a)
    # a different class or a box moved past IoU 0.9 is no agreement
    moved = [(b + 0.05, c, s, n) for b, c, s, n in dets]
    assert box_agreement(dets, moved, score_floor=0.0) < 0.2
    recls = [(b, (c + 1) % 5, s, n) for b, c, s, n in dets]
    assert box_agreement(dets, recls, score_floor=0.0) == 0.0
    none = [(b, c, s * 0.0, n) for b, c, s, n in dets]
    assert box_agreement(none, none) == 1.0


def test_result_type() -> None:
    gts, dets = make_scene(seed=12, n_images=4)
    s = evaluate_detections(gts, dets, 5, H, W)
    assert isinstance(s, DetectionScores) and s.num_images == 4
    assert s.pr_precision.shape == (5, 101) and s.recall_thresholds[-1] == 1.0
