"""Grad-CAM panels for the report: which pixels drove a prediction, side by side per class.

The report uses these to ask two questions: does the model look at the object when it is
right (and where does it look when it is wrong), and when int8 quantization flips a
prediction, did the evidence for the two classes differ or was it a near tie.

A constant map (e.g. Grad-CAM of a 1x1 layer) is never drawn as a flat overlay: its cam is None
in the rows, the figure panel says "not available", and :func:`flat_count` lets the report say
so in words (or show a note instead of the whole figure when every map is constant).
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from tfcnn.vis import plots


def gradcam_available() -> tuple[bool, str]:
    """(True, "") when tfcnn.vis.explain.gradcam can be imported, else (False, why)."""
    try:
        from tfcnn.vis.explain import gradcam  # noqa: F401
    except Exception as exc:  # ImportError, or an error inside the module while it is being written
        return False, f"tfcnn.vis.explain.gradcam is not importable ({type(exc).__name__}: {exc})"
    return True, ""


def cam_layer(model: keras.Model) -> str:
    """The layer the report's Grad-CAM reads: the last feature map larger than 1x1."""
    from tfcnn.vis.explain import default_layer

    return default_layer(model)


def constant_note(model: keras.Model) -> str:
    """"Grad-CAM map is constant for layer X: nothing to show"."""
    from tfcnn.vis.explain import constant_note as note

    return note("gradcam", cam_layer(model))


def cams(model: keras.Model, images: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps [N, H, W] in [0, 1], one per (image, class) pair (a constant map is all zeros)."""
    from tfcnn.vis.explain import gradcam

    if len(images) == 0:
        return np.zeros((0,) + tuple(images.shape[1:3]), dtype=np.float32)
    out = gradcam(model, np.asarray(images), np.asarray(classes, dtype=np.int32))
    return np.asarray(out, dtype=np.float32)


def informative(maps: np.ndarray) -> list[np.ndarray | None]:
    """The maps with every constant (or non-finite) one replaced by None."""
    from tfcnn.vis.explain import flat_maps

    if len(maps) == 0:
        return []
    return [None if flat else m for m, flat in zip(maps, flat_maps(maps))]


def flat_count(rows: list[dict]) -> tuple[int, int]:
    """(constant maps, all maps) in rows from prediction_rows / int8_rows."""
    cams_ = [cam for row in rows for _, cam in row["cams"]]
    return sum(cam is None for cam in cams_), len(cams_)


def prediction_rows(
    model: keras.Model, images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, probs: np.ndarray,
    indices: Sequence[int], class_names: Sequence[str],
) -> list[dict]:
    """Rows for `plots.cam_rows_figure`: CAM of the predicted class, plus the true class when wrong."""
    indices = [int(i) for i in indices]
    pairs: list[tuple[int, int]] = []  # (row, class)
    for row, i in enumerate(indices):
        pairs.append((row, int(predicted[i])))
        if predicted[i] != labels[i]:
            pairs.append((row, int(labels[i])))
    maps = informative(cams(model, images[[indices[r] for r, _ in pairs]], [c for _, c in pairs]))
    rows = [
        {"image": images[i], "title": f"#{i} true {class_names[labels[i]]}", "cams": []} for i in indices
    ]
    for (row, cls), cam in zip(pairs, maps):
        i = indices[row]
        kind = "predicted" if cls == predicted[i] else "true"
        rows[row]["cams"].append((f"{kind}: {class_names[cls]}\np={probs[i, cls]:.2f}", cam))
    return rows


def int8_rows(
    model: keras.Model, images: np.ndarray, changed: Sequence[dict], class_names: Sequence[str]
) -> list[dict]:
    """Rows for the int8_changed entries of verification.json: float-class CAM vs int8-class CAM."""
    idx = [int(c["index"]) for c in changed]
    float_cls = [int(c["keras_class"]) for c in changed]
    int8_cls = [int(c["int8_class"]) for c in changed]
    maps = informative(cams(model, np.concatenate([images[idx], images[idx]]), float_cls + int8_cls))
    n = len(changed)
    rows = []
    for j, c in enumerate(changed):
        label = c.get("label")
        true = f"true {class_names[int(label)]}" if label is not None else "true ?"
        rows.append({
            "image": images[idx[j]],
            "title": f"#{idx[j]} {true}",
            "cams": [
                (f"float: {class_names[float_cls[j]]}\np={float(c.get('keras_prob', float('nan'))):.2f}", maps[j]),
                (f"int8: {class_names[int8_cls[j]]}\np={float(c.get('int8_prob', float('nan'))):.2f}", maps[n + j]),
            ],
        })
    return rows


def rows_png(rows: list[dict], title: str) -> bytes:
    return plots.figure_png(plots.cam_rows_figure(rows, title))
