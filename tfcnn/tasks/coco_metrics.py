"""COCO-style box detection metrics in pure numpy: a re-implementation of pycocotools' ``COCOeval``
for ``iouType="bbox"`` with ``iscrowd = 0`` everywhere, plus the small matching helpers the report
and verify stages need.

Why a re-implementation instead of calling pycocotools: the evaluate stage works on padded numpy
arrays (see :mod:`tfcnn.data.boxes`), must not round-trip through JSON-shaped dicts of Python
floats (slow at 10^5 detections) and must run where pycocotools is not installed. The numbers are
meant to be *the same* as COCO's, so every convention below is COCO's, and
``tests/test_coco_metrics.py`` checks all 12 summary numbers and the full precision array against
pycocotools on random scenes.

COCO's conventions, in the order ``COCOeval`` applies them:

* Evaluation is per (image, class). Detections are sorted by score, descending, with a *stable*
  sort (ties keep input order), and only the top ``maxDets[-1] = 100`` *per image and class* count.
* At each IoU threshold 0.50:0.05:0.95 each detection, in score order, greedily takes the unmatched
  ground truth of its class with the highest IoU >= the threshold (``min(t, 1 - 1e-10)``; on equal
  IoU the later ground truth wins, as in COCO's ``>=`` scan).
* Area ranges all / small (< 32^2 px) / medium (32^2..96^2) / large (> 96^2), bounds inclusive,
  in PIXELS (hence the ``height``/``width`` arguments): a ground truth outside the range is
  "ignored": a detection may still match it (only if no in-range ground truth is available), and
  such a match is neither a true nor a false positive; an *unmatched* detection outside the range is
  ignored too. Ignored ground truths do not count towards recall.
* Accumulation pools a class's detections over all images, sorts them by score (stable, image
  order breaking ties), takes cumulative TP/FP, makes precision monotone from the right and samples
  it at the 101 recall points 0:0.01:1 (``searchsorted(..., side="left")``; points beyond the
  reached recall get precision 0). AP is the mean of those samples; recall is the final recall.
  ``maxDets`` 1/10/100 truncate each (image, class) list before pooling.
* A class (or area range) with no in-range ground truth has no AP (COCO stores -1) and is left out
  of every mean; here the per-class values are NaN and a summary with nothing to average is NaN
  (``None`` in :meth:`DetectionScores.to_dict`, since the records are strict JSON).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tfcnn.data import boxes as box_ops

# COCO's parameters (pycocotools Params.setDetParams), built the same way so the float values match
# bit for bit (np.arange would drift; COCO's own comment says so).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0**2, 1e5**2),
    "small": (0.0**2, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
_AREA_NAMES = tuple(AREA_RANGES)
_IOU_CAP = 1 - 1e-10  # COCO: min(t, 1 - 1e-10), so IoU 1.0 still matches at the top threshold
_EPS = np.spacing(1)  # COCO's tp / (tp + fp + eps)

# One image's detections: (boxes [N, 4] normalised, classes [N], scores [N], valid count).
Detections = tuple[np.ndarray, np.ndarray, np.ndarray, int]


# --------------------------------------------------------------------------- small helpers


def interpolated_precision(precision: Sequence[float] | np.ndarray) -> np.ndarray:
    """Precision made monotone from the right: ``p_interp[i] = max(p[i:])``.

    Why: this is the PASCAL/COCO interpolation; a detector is credited, at recall r, with the best
    precision it reaches at any recall >= r, which removes the PR curve's zig-zag.
    """
    p = np.asarray(precision, np.float64).reshape(-1)
    if p.size == 0:
        return p
    return np.maximum.accumulate(p[::-1])[::-1]


def mean_ap(per_class: Sequence[float] | np.ndarray) -> float:
    """Mean of per-class APs ignoring NaN (classes without ground truth, COCO's -1); NaN if none."""
    v = np.asarray(per_class, np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def _nan_to_none(value: Any) -> Any:
    """Strict-JSON form: NaN/inf -> None, numpy scalars and arrays -> Python floats and lists."""
    if isinstance(value, np.ndarray):
        return [_nan_to_none(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# --------------------------------------------------------------------------- input checks


def _class_ids(values: np.ndarray, num_classes: int, what: str, image: int) -> np.ndarray:
    """Float or int class ids -> int64, refusing non-integers and ids outside ``[0, num_classes)``
    (COCO silently drops unknown categories; here that would hide a label-map bug)."""
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size and not np.all(v == np.round(v)):
        raise ValueError(f"image {image}: {what} class ids must be whole numbers, got {v[v != np.round(v)][:3]}")
    ids = np.round(v).astype(np.int64)
    bad = (ids < 0) | (ids >= num_classes)
    if bad.any():
        raise ValueError(f"image {image}: {what} class id {ids[bad][0]} outside [0, {num_classes})")
    return ids


def _check_ground_truth(gt: np.ndarray, image: int) -> np.ndarray:
    a = np.asarray(gt, np.float64)
    if a.size == 0:
        return np.zeros((0, box_ops.LABEL_FIELDS), np.float64)
    if a.ndim != 2 or a.shape[1] != box_ops.LABEL_FIELDS:
        raise ValueError(f"image {image}: ground truth must be [M, 5] (box, class id), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"image {image}: ground truth has a NaN or infinite value")
    return a


def _check_detections(det: Detections, image: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The valid rows of one image's detections; NaN is a failure (a broken model or export), not a
    number to be sorted somewhere, so it raises naming the image."""
    try:
        b, c, s, n = det
    except (TypeError, ValueError):
        raise ValueError(f"image {image}: detections must be (boxes, classes, scores, count)") from None
    n = int(n)
    b = np.asarray(b, np.float64)
    b = b.reshape(-1, 4) if b.size else np.zeros((0, 4))
    c = np.asarray(c, np.float64).reshape(-1)
    s = np.asarray(s, np.float64).reshape(-1)
    if n < 0 or n > len(b) or n > len(c) or n > len(s):
        raise ValueError(f"image {image}: detection count {n} outside 0..{min(len(b), len(c), len(s))}")
    b, c, s = b[:n], c[:n], s[:n]
    if not np.isfinite(s).all():
        raise ValueError(f"image {image}: detection score is NaN or infinite (row {int(np.argmin(np.isfinite(s)))})")
    if not np.isfinite(b).all():
        row = int(np.argmin(np.isfinite(b).all(axis=1)))
        raise ValueError(f"image {image}: detection box is NaN or infinite (row {row})")
    if not np.isfinite(c).all():
        raise ValueError(f"image {image}: detection class is NaN or infinite")
    return b, c, s


def _pixel_area(b: np.ndarray, height: int, width: int) -> np.ndarray:
    """COCO's area, ``w * h`` in pixels, of normalised boxes."""
    b = np.asarray(b, np.float64).reshape(-1, 4)
    return ((b[:, 3] - b[:, 1]) * width) * ((b[:, 2] - b[:, 0]) * height)


# --------------------------------------------------------------------------- the result


@dataclass
class DetectionScores:
    """COCO's 12 summary numbers plus per-class detail; NaN = nothing to average (COCO's -1).

    ``precision`` and ``recall`` are COCOeval's ``eval["precision"]`` ``[T, R, K, A, M]`` and
    ``eval["recall"]`` ``[T, K, A, M]`` arrays, -1 included, for anyone who needs another slice
    (T = 10 IoU thresholds, R = 101 recall points, K classes, A = all/small/medium/large,
    M = maxDets 1/10/100). They are left out of :meth:`to_dict`.
    """

    map: float  # AP @ IoU .50:.95, all areas, 100 dets
    map_50: float
    map_75: float
    map_small: float
    map_medium: float
    map_large: float
    ar_1: float
    ar_10: float
    ar_100: float
    ar_small: float
    ar_medium: float
    ar_large: float
    per_class_ap: np.ndarray  # [K], NaN for classes without ground truth
    per_class_ap50: np.ndarray  # [K]
    per_class_ar_100: np.ndarray  # [K] recall @ .50:.95, 100 dets
    pr_precision: np.ndarray  # [K, 101] interpolated precision at IoU .5 (all areas, 100 dets); NaN rows
    pr_scores: np.ndarray  # [K, 101] score of the detection where each recall point is reached (0 past the end)
    num_ground_truth: np.ndarray  # [K] int, real (non-padding) objects per class
    num_detections: np.ndarray  # [K] int, valid detections per class (before the 100-per-image cap)
    num_images: int
    recall_thresholds: np.ndarray = field(default_factory=lambda: RECALL_THRESHOLDS.copy())
    precision: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    recall: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    SUMMARY_KEYS = (
        "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
        "ar_1", "ar_10", "ar_100", "ar_small", "ar_medium", "ar_large",
    )  # fmt: skip

    @property
    def stats(self) -> np.ndarray:
        """The 12 numbers in ``COCOeval.stats`` order (NaN where COCO prints -1)."""
        return np.array([getattr(self, k) for k in self.SUMMARY_KEYS], np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN -> None, arrays -> lists; the raw precision/recall arrays are omitted.

        Keys: the 12 summary numbers, ``per_class_ap``, ``per_class_ap50``, ``per_class_ar_100``
        (lists of K), ``pr_curves`` ({iou, recall [101], precision [K][101], scores [K][101]}),
        ``per_class_counts`` ([{ground_truth, detections}] * K) and ``num_images``.
        """
        out: dict[str, Any] = {k: getattr(self, k) for k in self.SUMMARY_KEYS}
        out.update(
            per_class_ap=self.per_class_ap,
            per_class_ap50=self.per_class_ap50,
            per_class_ar_100=self.per_class_ar_100,
            pr_curves={
                "iou": 0.5,
                "recall": self.recall_thresholds,
                "precision": self.pr_precision,
                "scores": self.pr_scores,
            },
            per_class_counts=[
                {"ground_truth": int(g), "detections": int(d)}
                for g, d in zip(self.num_ground_truth, self.num_detections)
            ],
            num_images=self.num_images,
        )
        return _nan_to_none(out)


# --------------------------------------------------------------------------- COCO evaluation


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    """Concatenate per-image pieces (a split may have no images at all)."""
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def _mean_valid(s: np.ndarray) -> float:
    """COCO's ``_summarize``: mean over entries > -1, or (here) NaN when there are none."""
    v = s[s > -1]
    return float(v.mean()) if v.size else math.nan


def evaluate_detections(
    ground_truth: Sequence[np.ndarray],
    detections: Sequence[Detections],
    num_classes: int,
    height: int,
    width: int,
) -> DetectionScores:
    """COCO bbox evaluation (``COCOeval(gt, dt, "bbox")``, iscrowd = 0) of a split.

    ``ground_truth[i]`` is image i's padded ``[M, 5]`` label array (padding rows class -1);
    ``detections[i]`` is ``(boxes [N, 4], classes [N], scores [N], count)`` with boxes normalised
    ``(ymin, xmin, ymax, xmax)`` and rows past ``count`` ignored. ``height``/``width`` (pixels) turn
    areas into COCO's pixel units for the small/medium/large split. Raises ValueError naming the
    image on NaN/inf, bad shapes or class ids outside ``[0, num_classes)``.

    The greedy matching is sequential in score order, so it is vectorised *across* (image, class)
    groups instead: step d matches every group's d-th detection at once, for all area ranges and
    IoU thresholds (groups sorted by detection count so the active ones are a prefix).
    """
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth arrays but {len(detections)} detection tuples")
    K = int(num_classes)
    if K < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive (COCO's areas are in pixels), got {height}x{width}")
    T, R, A, M = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_RANGES), len(MAX_DETS)
    lo = np.array([r[0] for r in AREA_RANGES.values()])
    hi = np.array([r[1] for r in AREA_RANGES.values()])

    # ---- flatten: one row per real ground truth / valid detection
    g_img, g_cls, g_box = [], [], []
    d_img, d_cls, d_box, d_score = [], [], [], []
    for i, (gt, det) in enumerate(zip(ground_truth, detections)):
        rows = box_ops.valid_rows(_check_ground_truth(gt, i))
        g_img.append(np.full(len(rows), i, np.int64))
        g_cls.append(_class_ids(rows[:, 4], K, "ground-truth", i))
        g_box.append(rows[:, :4])
        b, c, s = _check_detections(det, i)
        d_img.append(np.full(len(b), i, np.int64))
        d_cls.append(_class_ids(c, K, "detection", i))
        d_box.append(b)
        d_score.append(s)
    n_images = len(ground_truth)
    g_img, g_cls = _concat(g_img, np.int64), _concat(g_cls, np.int64)
    d_img, d_cls = _concat(d_img, np.int64), _concat(d_cls, np.int64)
    g_box, d_box = _concat(g_box, np.float64).reshape(-1, 4), _concat(d_box, np.float64).reshape(-1, 4)
    d_score = _concat(d_score, np.float64)
    num_gt = np.bincount(g_cls, minlength=K).astype(np.int64)
    num_det = np.bincount(d_cls, minlength=K).astype(np.int64)

    # ---- ground truths grouped by (image, class), input row order kept (COCO's annotation order)
    g_key = g_img * K + g_cls
    g_order = np.argsort(g_key, kind="stable")
    g_key, g_cls, g_box = g_key[g_order], g_cls[g_order], g_box[g_order]
    g_area = _pixel_area(g_box, height, width)
    g_ign = (g_area[:, None] < lo) | (g_area[:, None] > hi)  # [G, A]

    # ---- detections: per (image, class) by score desc, stable; keep the top maxDets[-1]
    d_key = d_img * K + d_cls
    d_row = np.arange(len(d_key))
    d_order = np.lexsort((d_row, -d_score, d_key))
    d_key, d_img, d_cls, d_box, d_score = (x[d_order] for x in (d_key, d_img, d_cls, d_box, d_score))
    first = np.searchsorted(d_key, d_key, side="left")
    d_rank = np.arange(len(d_key)) - first
    keep = d_rank < MAX_DETS[-1]
    d_key, d_img, d_cls, d_box, d_score, d_rank = (x[keep] for x in (d_key, d_img, d_cls, d_box, d_score, d_rank))
    n_det = len(d_key)
    d_area = _pixel_area(d_box, height, width)
    d_out = (d_area[:, None] < lo) | (d_area[:, None] > hi)  # [D, A]

    # ---- greedy matching, vectorised across groups
    dtm = np.zeros((n_det, A, T), bool)  # matched (to any ground truth)
    dtm_ign = np.zeros((n_det, A, T), bool)  # matched to an out-of-range ground truth
    gt_lo = np.searchsorted(g_key, d_key, side="left")
    gt_n = np.searchsorted(g_key, d_key, side="right") - gt_lo
    has_gt = gt_n > 0
    if has_gt.any():
        idx = np.flatnonzero(has_gt)  # detections in groups with ground truth (sorted by group, rank)
        Gm = int(gt_n[idx].max())
        slots = np.arange(Gm)
        gvalid = slots[None, :] < gt_n[idx, None]  # [n, Gm]
        gidx = np.where(gvalid, gt_lo[idx, None] + slots[None, :], 0)
        ious = _elementwise_iou(d_box[idx, None, :], g_box[gidx])  # [n, Gm]
        ious = np.where(gvalid, ious, -1.0)
        ign = np.where(gvalid[:, :, None], g_ign[gidx], False).transpose(0, 2, 1)  # [n, A, Gm]
        # groups of these detections; order groups by detection count (desc) -> active = prefix
        gk = d_key[idx]
        starts = np.flatnonzero(np.r_[True, gk[1:] != gk[:-1]])
        counts = np.diff(np.r_[starts, len(gk)])
        by_count = np.argsort(-counts, kind="stable")
        starts, counts = starts[by_count], counts[by_count]
        gtm = np.zeros((len(starts), A, T, Gm), bool)
        thr = np.minimum(IOU_THRESHOLDS, _IOU_CAP)[None, None, :, None]
        rev = slice(None, None, -1)
        for d in range(int(counts[0])):
            nb = int(np.count_nonzero(counts > d))
            rows = starts[:nb] + d  # positions in idx
            iou_d = ious[rows][:, None, None, :]  # [nb, 1, 1, Gm]
            ign_d = ign[rows][:, :, None, :]  # [nb, A, 1, Gm]
            cand = (iou_d >= thr) & ~gtm[:nb]  # padding has IoU -1, never a candidate
            s_in = np.where(cand & ~ign_d, iou_d, -1.0)
            s_out = np.where(cand & ign_d, iou_d, -1.0)
            # COCO scans with ">=", so among equal IoUs the LAST ground truth wins: argmax reversed
            best_in = Gm - 1 - np.argmax(s_in[..., rev], axis=-1)
            best_out = Gm - 1 - np.argmax(s_out[..., rev], axis=-1)
            has_in = s_in.max(axis=-1) > -1
            has_out = s_out.max(axis=-1) > -1
            choice = np.where(has_in, best_in, best_out)  # in-range ground truths first (COCO's break)
            matched = has_in | has_out  # [nb, A, T]
            gtm[:nb] |= (slots == choice[..., None]) & matched[..., None]
            pos = idx[rows]
            dtm[pos] = matched
            dtm_ign[pos] = ~has_in & has_out
    # an unmatched detection outside the area range is ignored, like its ground truth would be
    d_ign = dtm_ign | (~dtm & d_out[:, :, None])  # [D, A, T]

    # ---- accumulate per class, area range, maxDets
    npig = np.zeros((K, A), np.int64)
    np.add.at(npig, g_cls, (~g_ign).astype(np.int64))
    # COCO pools images in image-id order, each image's list in score order, then stable-sorts by
    # score: the same as sorting by (class, -score, image, rank)
    acc = np.lexsort((d_rank, d_img, -d_score, d_cls))
    a_cls, a_score, a_rank = d_cls[acc], d_score[acc], d_rank[acc]
    # ignored detections stay in the pooled list as neither TP nor FP, exactly as in COCO
    a_tp = (dtm & ~d_ign)[acc]  # [D, A, T]
    a_fp = (~dtm & ~d_ign)[acc]
    cls_lo = np.searchsorted(a_cls, np.arange(K), side="left")
    cls_hi = np.searchsorted(a_cls, np.arange(K), side="right")
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    scores = -np.ones((T, R, K, A, M))
    for k in range(K):
        sl = slice(cls_lo[k], cls_hi[k])
        for a in range(A):
            if npig[k, a] == 0:
                continue  # COCO leaves -1: no in-range ground truth, no AP
            for m, max_det in enumerate(MAX_DETS):
                sel = a_rank[sl] < max_det
                tp = np.cumsum(a_tp[sl][sel][:, a, :], axis=0, dtype=np.float64).T  # [T, nd]
                fp = np.cumsum(a_fp[sl][sel][:, a, :], axis=0, dtype=np.float64).T
                ss = a_score[sl][sel]
                nd = tp.shape[1]
                if nd == 0:
                    recall[:, k, a, m] = 0.0
                    precision[:, :, k, a, m] = 0.0
                    scores[:, :, k, a, m] = 0.0
                    continue
                rc = tp / npig[k, a]
                pr = tp / (fp + tp + _EPS)
                recall[:, k, a, m] = rc[:, -1]
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                for t in range(T):
                    pi = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
                    ok = pi < nd
                    pc = np.minimum(pi, nd - 1)
                    precision[t, :, k, a, m] = np.where(ok, pr[t, pc], 0.0)
                    scores[t, :, k, a, m] = np.where(ok, ss[pc], 0.0)

    # ---- summaries (COCOeval.summarize's _summarizeDets)
    ai = {name: i for i, name in enumerate(_AREA_NAMES)}
    t50 = int(np.flatnonzero(IOU_THRESHOLDS == 0.5)[0])
    t75 = int(np.flatnonzero(IOU_THRESHOLDS == 0.75)[0])
    m100 = MAX_DETS.index(100)

    def ap(area: str = "all", t: int | None = None) -> float:
        s = precision[:, :, :, ai[area], m100]
        return _mean_valid(s if t is None else s[t])

    def ar(area: str = "all", m: int = m100) -> float:
        return _mean_valid(recall[:, :, ai[area], m])

    p_all = precision[:, :, :, ai["all"], m100]  # [T, R, K]
    has = npig[:, ai["all"]] > 0
    per_class_ap = np.where(has, p_all.mean(axis=(0, 1)), np.nan)
    per_class_ap50 = np.where(has, p_all[t50].mean(axis=0), np.nan)
    per_class_ar = np.where(has, recall[:, :, ai["all"], m100].mean(axis=0), np.nan)
    pr_precision = np.where(has[:, None], p_all[t50].T, np.nan)
    pr_scores = np.where(has[:, None], scores[t50, :, :, ai["all"], m100].T, np.nan)
    return DetectionScores(
        map=ap(),
        map_50=ap(t=t50),
        map_75=ap(t=t75),
        map_small=ap("small"),
        map_medium=ap("medium"),
        map_large=ap("large"),
        ar_1=ar(m=MAX_DETS.index(1)),
        ar_10=ar(m=MAX_DETS.index(10)),
        ar_100=ar(),
        ar_small=ar("small"),
        ar_medium=ar("medium"),
        ar_large=ar("large"),
        per_class_ap=per_class_ap,
        per_class_ap50=per_class_ap50,
        per_class_ar_100=per_class_ar,
        pr_precision=pr_precision,
        pr_scores=pr_scores,
        num_ground_truth=num_gt,
        num_detections=num_det,
        num_images=n_images,
        precision=precision,
        recall=recall,
    )


def _elementwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of broadcast ``[..., 4]`` box pairs, same formula as :func:`tfcnn.data.boxes.iou`."""
    ymin = np.maximum(a[..., 0], b[..., 0])
    xmin = np.maximum(a[..., 1], b[..., 1])
    ymax = np.minimum(a[..., 2], b[..., 2])
    xmax = np.minimum(a[..., 3], b[..., 3])
    inter = np.maximum(ymax - ymin, 0.0) * np.maximum(xmax - xmin, 0.0)
    union = box_ops.area(a) + box_ops.area(b) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


# --------------------------------------------------------------------------- per-image matching


def _greedy(ious: np.ndarray, allowed: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """COCO's greedy assignment: rows in ``order`` each take the free column with the highest IoU
    >= ``threshold`` (capped at 1 - 1e-10; on equal IoU the last column, as COCO's ``>=`` scan).
    Returns, per row, the column index or -1."""
    n, g = ious.shape
    out = np.full(n, -1, np.int64)
    free = np.ones(g, bool)
    thr = min(threshold, _IOU_CAP)
    for r in order:
        s = np.where(allowed[r] & free & (ious[r] >= thr), ious[r], -1.0)
        if g == 0 or s.max() <= -1:
            continue
        c = g - 1 - int(np.argmax(s[::-1]))
        out[r] = c
        free[c] = False
    return out


@dataclass
class ImageMatches:
    """One image's detections matched to its ground truth at one IoU threshold.

    Indices refer to the caller's arrays: detection rows ``0..count-1`` and ground-truth rows of the
    padded ``[M, 5]`` array (padding rows get -1).
    """

    gt_of_detection: np.ndarray  # [count] int, matched ground-truth row or -1 (a false positive)
    iou_of_detection: np.ndarray  # [count] float, IoU with the matched ground truth (0 if none)
    detection_of_gt: np.ndarray  # [M] int, matching detection row or -1 (missed, or padding)
    is_object: np.ndarray  # [M] bool, real ground-truth rows (class id >= 0)

    @property
    def true_positive(self) -> np.ndarray:
        return self.gt_of_detection >= 0

    @property
    def missed(self) -> np.ndarray:
        """Real ground-truth rows nobody matched (padding rows are not "missed")."""
        return self.is_object & (self.detection_of_gt < 0)


def match_image(
    ground_truth: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray,
    count: int,
    iou: float = 0.5,
    image: int = 0,
) -> ImageMatches:
    """Which detections of one image match which ground truth, COCO-style: detections in descending
    score order (stable) each take the unmatched same-class ground truth with the highest IoU >=
    ``iou``. Unlike :func:`evaluate_detections` there is no area range and no 100-per-class cap:
    this is for drawing right (matched), wrong (unmatched detection) and missed boxes.
    ``image`` only names the image in error messages."""
    gt = _check_ground_truth(ground_truth, image)
    b, c, s = _check_detections((boxes, classes, scores, count), image)
    real = np.flatnonzero(gt[:, 4] >= 0)
    g_cls = np.round(gt[real, 4]).astype(np.int64)
    d_cls = np.round(c).astype(np.int64)
    ious = box_ops.iou(b, gt[real, :4])
    col = _greedy(ious, d_cls[:, None] == g_cls[None, :], np.argsort(-s, kind="stable"), iou)
    hit = np.flatnonzero(col >= 0)
    gt_of_det = np.full(len(col), -1, np.int64)
    gt_of_det[hit] = real[col[hit]]
    iou_of_det = np.zeros(len(col), np.float64)
    iou_of_det[hit] = ious[hit, col[hit]]
    det_of_gt = np.full(len(gt), -1, np.int64)
    det_of_gt[gt_of_det[hit]] = hit
    return ImageMatches(gt_of_det, iou_of_det, det_of_gt, gt[:, 4] >= 0)


def match_detections(
    ground_truth: Sequence[np.ndarray], detections: Sequence[Detections], iou: float = 0.5
) -> np.ndarray:
    """Per image and detection row, whether it is a true positive at IoU ``iou``: bool
    ``[n_images, D]`` with D the longest (padded) detection array; rows past an image's count are
    False. The matching is :func:`match_image`'s (greedy by score, same class, one-to-one), which
    also gives the ground-truth indices and the missed objects when a caller needs them."""
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth arrays but {len(detections)} detection tuples")
    width = max((len(np.asarray(d[0]).reshape(-1, 4)) for d in detections), default=0)
    out = np.zeros((len(detections), width), bool)
    for i, (gt, (b, c, s, n)) in enumerate(zip(ground_truth, detections)):
        m = match_image(gt, b, c, s, n, iou=iou, image=i)
        out[i, : len(m.gt_of_detection)] = m.true_positive
    return out


def box_agreement(
    dets_a: Sequence[Detections],
    dets_b: Sequence[Detections],
    iou: float = 0.9,
    score_floor: float = 0.5,
    symmetric: bool = False,
) -> float:
    """How far two formats (e.g. the Keras model and its TFLite export) draw the same boxes.

    Definition: per image, keep each side's valid detections with ``score >= score_floor``. A's kept
    detections, in descending score order (stable), each take the not-yet-taken kept detection of B
    with the same class and the highest IoU, provided that IoU >= ``iou`` (one-to-one, COCO's greedy
    rule with B in the role of ground truth). The agreement is the number of matched pairs over all
    images divided by the number of A's kept detections; with ``symmetric=True`` it is divided by
    ``max(n_A, n_B)`` instead, so extra boxes on either side count against it. When the
    denominator is 0 (no side has a box above the floor) the formats agree trivially: 1.0, and 0.0
    if only B has boxes in the asymmetric form. Why IoU 0.9 by default: an export that changes
    numerics slightly (quantisation, op fusion) moves boxes by a pixel or two, not by 10 % of IoU.
    """
    if len(dets_a) != len(dets_b):
        raise ValueError(f"{len(dets_a)} images in A but {len(dets_b)} in B")
    matched = n_a = n_b = 0
    for i, (da, db) in enumerate(zip(dets_a, dets_b)):
        ba, ca, sa = _check_detections(da, i)
        bb, cb, sb = _check_detections(db, i)
        ka, kb = sa >= score_floor, sb >= score_floor
        ba, ca, sa, bb, cb = ba[ka], np.round(ca[ka]), sa[ka], bb[kb], np.round(cb[kb])
        n_a += len(ba)
        n_b += len(bb)
        if len(ba) and len(bb):
            col = _greedy(box_ops.iou(ba, bb), ca[:, None] == cb[None, :], np.argsort(-sa, kind="stable"), iou)
            matched += int(np.count_nonzero(col >= 0))
    denom = max(n_a, n_b) if symmetric else n_a
    if denom == 0:
        return 1.0 if (symmetric or n_b == 0) else 0.0
    return matched / denom
