"""The detection task's figures and report section: precision-recall curves at IoU 0.5, per-class
AP bars, and the gallery scenes with their ground truth and detections drawn on them.

Everything is drawn from what :mod:`tfcnn.evaluate.detection` saved (the Evaluation record and
``predictions.npz``), never by re-running the model, so a report is rebuilt in seconds and shows
exactly the detections the headline numbers were computed from. This module reads those files
with numpy and does not import the evaluation (which needs the COCO metrics and Keras): drawing
a report must not depend on being able to evaluate.

Boxes follow :mod:`tfcnn.data.boxes`: ``(ymin, xmin, ymax, xmax)`` in normalised coordinates,
ground-truth rows padded with class id -1.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from tfcnn.run import Evaluation, Run
from tfcnn.vis import plots

SCORE_FLOOR = 0.3  # detections drawn on the gallery (and counted as errors there); the evaluation's gallery uses the same
GALLERY_COLS = 4
RECALL_POINTS = 101  # COCO samples precision at recall 0:0.01:1
GT_COLOR = "#ffd400"
RIGHT_COLOR = "#16a34a"
WRONG_COLOR = "#dc2626"
FIGURES = ("pr_curves", "class_ap", "gallery")
ARRAYS = ("boxes", "classes", "scores", "num_detections", "ground_truth", "correct_50", "gallery", "gallery_images")


# --------------------------------------------------------------------------- inputs


def _name(names: Sequence[str], c: int) -> str:
    return str(names[c]) if 0 <= c < len(names) else f"class {c}"


def _num(v: Any) -> float | None:
    """A finite float, or None (missing, null, NaN, or COCO's -1 for "undefined")."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f >= 0 else None


def class_names(rec: Evaluation) -> list[str]:
    """Class names from the record: its ``class_names`` detail, else the per-class rows' order."""
    names = rec.details.get("class_names")
    if names:
        return [str(n) for n in names]
    return [str(r.get("class", i)) for i, r in enumerate(rec.details.get("per_class") or []) if isinstance(r, dict)]


def pr_curves(raw: Any, names: Sequence[str]) -> dict[int, np.ndarray]:
    """Per class id, precision at the 101 COCO recall points (classes without a curve left out).

    Assumed layout (what :mod:`tfcnn.evaluate.detection` stores as ``details["pr_curves"]``): one
    entry per class in class order, each a list of precision values at recall 0, 0.01, ..., 1.
    Tolerated: a ``{class name or id: curve}`` mapping, a ``[recall points, classes]`` array (it
    is transposed), and per class ``None``, an empty list or all-undefined values (NaN or COCO's
    -1, a class with no ground truth), which drop that class. Single undefined points inside a
    curve (COCO writes -1 past the highest recall reached) become precision 0.
    """
    if raw is None:
        return {}
    if isinstance(raw, dict):
        items: list[tuple[int, Any]] = []
        for key, curve in raw.items():
            if isinstance(key, str) and key in names:
                items.append((list(names).index(key), curve))
            else:
                try:
                    items.append((int(key), curve))
                except (TypeError, ValueError):
                    continue
    else:
        seq = list(raw)
        try:
            arr = np.asarray(raw, np.float64)
        except (TypeError, ValueError):
            arr = None
        if arr is not None and arr.ndim == 2 and arr.shape[0] == RECALL_POINTS and arr.shape[1] != RECALL_POINTS and arr.shape[1] == len(names):
            seq = list(arr.T)
        items = list(enumerate(seq))
    out: dict[int, np.ndarray] = {}
    for c, curve in items:
        if curve is None or isinstance(curve, (int, float)):
            continue
        try:
            p = np.asarray(curve, np.float64).reshape(-1)
        except (TypeError, ValueError):
            continue
        ok = np.isfinite(p) & (p >= 0)
        if not len(p) or not ok.any():
            continue
        out[int(c)] = np.where(ok, p, 0.0)
    return out


def load_arrays(run: Run, rec: Evaluation) -> dict[str, np.ndarray] | str:
    """predictions.npz as arrays, or why it cannot be used."""
    rel = rec.files.get("predictions")
    path = run.root / rel if rel else run.path("predictions")
    if not path.is_file():
        return f"{path.name} is missing; re-run `tfcnn evaluate {run.root}`"
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - a damaged file costs its figures, not the report
        return f"{path.name} could not be read ({type(exc).__name__}: {exc})"
    missing = [k for k in ARRAYS if k not in arrays]
    if missing:
        return f"{path.name} lacks {', '.join(missing)}; re-run `tfcnn evaluate {run.root}`"
    return arrays


# --------------------------------------------------------------------------- figures


def pr_figure(curves: dict[int, np.ndarray], names: Sequence[str], ap50: dict[int, float | None]) -> Figure:
    """One axes, a precision-recall line per class at IoU 0.5, its AP@0.5 in the legend."""
    fig = Figure(figsize=(7.0, 4.8))
    ax = fig.subplots()
    cmap = plots.colormap("tab10" if len(names) <= 10 else "tab20")
    for c in sorted(curves):
        p = curves[c]
        recall = np.linspace(0.0, 1.0, len(p))
        ap = ap50.get(c)
        if ap is None:
            ap = float(np.mean(p))  # COCO's AP is the mean precision over the recall points
        ax.plot(recall, p, color=cmap(c % cmap.N), lw=1.6, label=f"{_name(names, c)} (AP@0.5 {ap:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated)")
    ax.grid(alpha=0.3)
    absent = [_name(names, c) for c in range(len(names)) if c not in curves]
    if absent:  # say which classes have no line, rather than leave the reader to count
        ax.text(0.99, 0.99, "no curve (no ground truth): " + ", ".join(absent), transform=ax.transAxes,
                ha="right", va="top", fontsize=7, color="#555555")
    ax.set_title("Precision-recall per class at IoU 0.5 (test split)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def ap_figure(per_class: Sequence[dict[str, Any]]) -> Figure:
    """Per-class AP@[.5:.95] and AP@0.5 side by side; a class without a value is marked n/a."""
    labels = [str(r.get("class", i)) for i, r in enumerate(per_class)]
    x = np.arange(len(labels))
    fig = Figure(figsize=(max(5.0, 0.8 * len(labels) + 2.0), 3.8))
    ax = fig.subplots()
    w = 0.38
    for off, key, label, color in ((-w / 2, "ap", "AP@[.5:.95]", "#24508f"), (w / 2, "ap50", "AP@0.5", "#e08a00")):
        vals = [_num(r.get(key)) for r in per_class]
        ax.bar(x + off, [v if v is not None else 0.0 for v in vals], w, label=label, color=color)
        for xi, v in zip(x, vals):
            ax.text(xi + off, (v or 0.0) + 0.01, "n/a" if v is None else f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("average precision")
    ax.set_title("Average precision per class (test split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def scene_summary(arrays: dict[str, np.ndarray], i: int, floor: float = SCORE_FLOOR) -> dict[str, Any]:
    """Test scene ``i``: its real ground truth rows, the detections scoring >= ``floor`` (boxes,
    classes, scores, right at IoU 0.5) and its errors (false positives + missed objects)."""
    k = int(round(float(arrays["num_detections"][i])))
    k = max(0, min(k, arrays["boxes"].shape[1]))
    scores = np.asarray(arrays["scores"][i, :k], np.float64)
    keep = scores >= floor
    gt = np.asarray(arrays["ground_truth"][i])
    gt = gt[gt[:, 4] >= 0]
    right = np.asarray(arrays["correct_50"][i, :k], bool)[keep]
    found = int(right.sum())
    return {
        "gt": gt,
        "boxes": np.asarray(arrays["boxes"][i, :k])[keep],
        "classes": np.asarray(arrays["classes"][i, :k])[keep],
        "scores": scores[keep],
        "right": right,
        "false_positives": int((~right).sum()),
        "missed": max(len(gt) - found, 0),
    }


def _rect(box: np.ndarray, h: int, w: int, **kw: Any) -> Rectangle:
    ymin, xmin, ymax, xmax = (float(v) for v in box[:4])
    # imshow puts pixel centres on integers, so the image spans -0.5 .. w - 0.5
    return Rectangle((xmin * w - 0.5, ymin * h - 0.5), (xmax - xmin) * w, (ymax - ymin) * h, fill=False, **kw)


def boxes_figure(
    arrays: dict[str, np.ndarray], names: Sequence[str], floor: float = SCORE_FLOOR, cols: int = GALLERY_COLS
) -> Figure:
    """The gallery scenes: ground truth dashed, detections scoring >= ``floor`` solid (green when
    they matched an object at IoU 0.5, red when not) labelled "class score". One Rectangle patch
    per drawn box, nothing else in ``ax.patches``."""
    shown = np.asarray(arrays["gallery"]).astype(np.int64).reshape(-1)
    images = np.asarray(arrays["gallery_images"])
    n = min(len(shown), len(images))
    if n == 0:
        raise ValueError("the gallery is empty")
    cols = max(1, min(cols, n))
    rows = int(math.ceil(n / cols))
    fig = Figure(figsize=(3.0 * cols, 3.2 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False)
    totals = {"objects": 0, "detections": 0, "errors": 0}
    for j, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if j >= n:
            ax.set_axis_off()
            continue
        i = int(shown[j])
        img, cmap = plots.display_image(images[j])
        h, w = img.shape[:2]
        ax.imshow(img, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
        s = scene_summary(arrays, i, floor)
        for row in s["gt"]:
            ax.add_patch(_rect(row, h, w, edgecolor=GT_COLOR, linestyle="--", linewidth=1.3, zorder=3))  # over a matching detection
        for box, cls, score, ok in zip(s["boxes"], s["classes"], s["scores"], s["right"]):
            color = RIGHT_COLOR if ok else WRONG_COLOR
            ax.add_patch(_rect(box, h, w, edgecolor=color, linestyle="-", linewidth=1.6))
            ax.text(float(box[1]) * w - 0.5, float(box[0]) * h - 0.5, f"{_name(names, int(round(float(cls))))} {score:.2f}",
                    color="white", fontsize=6, va="bottom", ha="left",
                    bbox={"facecolor": color, "edgecolor": "none", "pad": 1.0, "alpha": 0.85}, clip_on=True)
        errors = s["false_positives"] + s["missed"]
        totals["objects"] += len(s["gt"])
        totals["detections"] += len(s["scores"])
        totals["errors"] += errors
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(f"#{i}: {len(s['gt'])} obj, {len(s['scores'])} det, {errors} err", fontsize=8,
                     color=WRONG_COLOR if errors else "black")
    fig.suptitle(
        f"Test scenes: {totals['objects']} objects (dashed), {totals['detections']} detections with score >= {floor:g} "
        f"(green right, red wrong at IoU 0.5), {totals['errors']} errors (false positives + misses)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def figures(run: Run, rec: Evaluation, floor: float = SCORE_FLOOR) -> dict[str, "Figure | str"]:
    """Every detection figure of the run (keys :data:`FIGURES`), or for each one why it was not drawn.

    A figure whose inputs do not have the expected layout becomes its reason too ("could not
    draw ...: error"), so a change in what the evaluation writes costs a figure, not the report.
    """
    names = class_names(rec)
    per_class = [r for r in (rec.details.get("per_class") or []) if isinstance(r, dict)]

    def pr() -> "Figure | str":
        curves = pr_curves(rec.details.get("pr_curves"), names)
        if curves:
            return pr_figure(curves, names, {c: _num(r.get("ap50")) for c, r in enumerate(per_class)})
        if rec.details.get("pr_curves") is None:
            return f"{run.path('evaluation').name} has no pr_curves; re-run `tfcnn evaluate {run.root}`"
        return "no class has a precision-recall curve (no test scene has ground truth for any class)"

    def gallery() -> "Figure | str":
        arrays = load_arrays(run, rec)
        if isinstance(arrays, str):
            return arrays
        shown = np.asarray(arrays["gallery"]).reshape(-1)
        if not len(shown) or not len(arrays["gallery_images"]):
            return "the evaluation saved no gallery scenes (detection.report_images = 0, or an empty test split)"
        n = len(arrays["num_detections"])
        if shown.min() < 0 or shown.max() >= n:
            return f"gallery indices {shown.tolist()} are outside the {n} saved test scenes; re-run `tfcnn evaluate {run.root}`"
        return boxes_figure(arrays, names, floor)

    makers: dict[str, Callable[[], "Figure | str"]] = {
        "pr_curves": pr,
        "class_ap": lambda: ap_figure(per_class) if per_class else f"{run.path('evaluation').name} has no per-class AP",
        "gallery": gallery,
    }
    out: dict[str, Figure | str] = {}
    for key, make in makers.items():
        try:
            out[key] = make()
        except Exception as exc:  # noqa: BLE001 - see the docstring
            out[key] = f"could not draw the {key} figure from {run.path('evaluation').name} / predictions ({type(exc).__name__}: {exc})"
    return out


# --------------------------------------------------------------------------- report


def section_body(run: Run, img_tag: Callable[[bytes, str], str], note: Callable[[str], str],
                 table: Callable[..., str], kv_table: Callable[[Sequence[tuple[str, Any]]], str]) -> str:
    """The report's "Detection" section (the report passes its HTML helpers, so this module does
    not import the report)."""
    rec = run.read_optional(Evaluation)
    if rec is None:
        return note(f"{run.path('evaluation').name} is missing; run `tfcnn evaluate {run.root}`")
    h, d = rec.headline, rec.details
    post = d.get("postprocess") or {}
    pairs = [
        ("detector", d.get("detector")),
        ("test scenes", h.get("num_test", rec.num_test)),
        ("mAP@[.5:.95]", h.get("test_map")),
        ("mAP@0.5", h.get("test_map_50")),
        ("mAP@0.75", h.get("test_map_75")),
        ("mAP small / medium / large", " / ".join(_fmt(h.get(f"test_map_{s}")) for s in ("small", "medium", "large"))),
        ("AR@1 / AR@10 / AR@100", " / ".join(_fmt(h.get(f"test_ar_{k}")) for k in (1, 10, 100))),
        ("test loss", h.get("test_loss")),
        ("detections per scene (mean)", d.get("mean_detections")),
        ("score threshold", post.get("score_threshold")),
        ("NMS IoU", post.get("nms_iou")),
        ("max detections", post.get("max_detections")),
    ]
    body = kv_table([(k, v) for k, v in pairs if v is not None])
    body += ("<p>COCO metrics of the test split: AP averaged over IoU 0.5 to 0.95 (step 0.05) unless a threshold is named; "
             "size by box area (small &lt; 32², large &gt; 96² pixels); a dash means no object of that kind.</p>")
    per_class = [r for r in (d.get("per_class") or []) if isinstance(r, dict)]
    if per_class:
        extra: list[str] = []
        for r in per_class:
            extra += [k for k in r if k not in ("class", "ap", "ap50") and k not in extra and not isinstance(r[k], (dict, list))]
        rows = [[r.get("class"), _num(r.get("ap")), _num(r.get("ap50")), *[r.get(k) for k in extra]] for r in per_class]
        body += "<h3>Per class</h3>" + table(["class", "AP@[.5:.95]", "AP@0.5", *extra], rows, "num")
    else:
        body += "<h3>Per class</h3>" + note(f"{run.path('evaluation').name} has no per-class AP")
    figs = figures(run, rec)
    for key, title, alt in (
        ("pr_curves", "Precision-recall at IoU 0.5", "precision-recall curves per class at IoU 0.5"),
        ("class_ap", "Average precision per class", "per-class AP bar chart"),
        ("gallery", "Detections on test scenes", "detections and ground truth on test scenes"),
    ):
        f = figs[key]
        body += f"<h3>{title}</h3>" + (img_tag(plots.figure_png(f), alt) if isinstance(f, Figure) else note(f))
    return body


def _fmt(v: Any) -> str:
    f = _num(v)
    return "–" if f is None else f"{f:.4f}"


def export_rows(ver: dict[str, Any], size_text: Callable[[Any], str], verdict: Callable[[Any], Any]) -> list[list[Any]]:
    """verification.json's per-format rows in the detection task's terms (the report's table cells)."""
    rows = []
    for name, r in (ver.get("formats") or {}).items():
        if not isinstance(r, dict):
            continue
        notes = "; ".join(map(str, r.get("failures") or []))
        if isinstance(r.get("predictions"), str):
            notes = (notes + "; " if notes else "") + r["predictions"]
        rows.append([name, verdict(r.get("passed")), r.get("map_50"), r.get("map"), r.get("keras_map"), r.get("box_agreement"),
                     r.get("count_agreement"), r.get("mean_detections"), size_text(r.get("bytes")), r.get("latency_ms_median"), notes])
    return rows


EXPORT_HEADERS = ["format", "passed", "mAP@0.5", "mAP@[.5:.95]", "Keras mAP", "box agreement", "count agreement",
                  "detections/image", "size", "p50 ms", "notes"]
