"""The segmentation task's report section: headline scores, per-class IoU / Dice, the confusion
matrix over classes, and mask overlays of the best and worst test images (by per-image mean
IoU). Drawn only from the Evaluation record and predictions.npz, never re-running the model.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

from tfcnn.run import Evaluation, Run
from tfcnn.vis import plots


def palette(k: int) -> np.ndarray:
    """``[k, 3]`` colours in 0..1: black background, then tab20's colours per class."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return np.array([[0.0, 0.0, 0.0]] + [cmap(i % 20)[:3] for i in range(k - 1)], np.float64)


def overlay_figure(images: np.ndarray, truth: np.ndarray, pred: np.ndarray, ious: np.ndarray, names: Sequence[str]) -> Figure:
    """One row per image: the image, the true mask and the predicted mask over it, with the
    image's mean IoU in the title."""
    n = len(images)
    colours = palette(len(names))
    fig = Figure(figsize=(6.6, 2.2 * n + 0.4))
    axes = fig.subplots(n, 3, squeeze=False)
    for r in range(n):
        img = images[r].astype(np.float64) / 255.0
        rgb = np.repeat(img, 3, -1) if img.shape[-1] == 1 else img
        for c, (title, mask) in enumerate((("image", None), ("truth", truth[r]), ("prediction", pred[r]))):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            shown = rgb if mask is None else np.where(mask[..., None] > 0, 0.45 * rgb + 0.55 * colours[mask], rgb)
            ax.imshow(np.clip(shown, 0, 1))
            if c == 2:
                ax.set_title(f"prediction (IoU {ious[r]:.2f})", fontsize=8)
            else:
                ax.set_title(title, fontsize=8)
    fig.suptitle("Best and worst test images by mean IoU")
    fig.tight_layout()
    return fig


def confusion_figure(cm: np.ndarray, names: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix over classes (background included)."""
    cm = np.asarray(cm, np.float64)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1.0)
    fig = Figure(figsize=(1.0 + 0.5 * len(names), 0.8 + 0.5 * len(names)))
    ax = fig.subplots()
    im = ax.imshow(rows, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def section_body(run: Run, img_tag: Callable[[bytes, str], str], note: Callable[[str], str],
                 table: Callable[..., str], kv_table: Callable[[Sequence[tuple[str, Any]]], str]) -> str:
    """The report's "Segmentation" section (the report passes its HTML helpers)."""
    rec = run.read_optional(Evaluation)
    if rec is None:
        return note(f"{run.path('evaluation').name} is missing; run `tfcnn evaluate {run.root}`")
    h, d = rec.headline, rec.details
    body = kv_table([
        ("test images", h.get("num_test", rec.num_test)),
        ("mean IoU (all classes)", h.get("test_mean_iou")),
        ("mean Dice (foreground classes)", h.get("test_mean_dice")),
        ("pixel accuracy", h.get("test_pixel_accuracy")),
        (f"boundary F-score ({d.get('boundary_tolerance_px')} px)", h.get("test_boundary_f1")),
        ("test loss", h.get("test_loss")),
    ])
    per_class = d.get("per_class") or []
    if per_class:
        body += "<h3>Per class</h3>" + table(
            ["class", "IoU", "Dice", "true pixels", "predicted pixels"],
            [[r["class"], r.get("iou"), r.get("dice"), r.get("pixels"), r.get("predicted")] for r in per_class], "num",
        )
    names = d.get("class_names") or [r["class"] for r in per_class]
    if d.get("confusion_matrix"):
        body += "<h3>Confusion matrix (rows: true class, normalised)</h3>"
        body += img_tag(plots.figure_png(confusion_figure(np.asarray(d["confusion_matrix"]), names)), "confusion matrix")
    path = run.path("predictions")
    if not path.is_file():
        return body + note(f"{path.name} is missing; run `tfcnn evaluate {run.root}` to draw the overlays")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    shown = arrays.get("gallery")
    if shown is None or not len(shown):
        return body + note("no test images chosen for the overlays (segmentation.report_images = 0)")
    fig = overlay_figure(arrays["gallery_images"], arrays["truth"][shown], arrays["masks"][shown], arrays["image_iou"][shown], names)
    return body + "<h3>Best and worst test images</h3>" + img_tag(plots.figure_png(fig), "mask overlays")
