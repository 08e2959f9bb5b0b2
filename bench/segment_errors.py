"""Where a scene segmenter's errors are: per object, by crowding and size, and what voting or a flip buys.

Usage: ``python bench/segment_errors.py RUN_DIR`` on a trained ``fashion_scenes`` (or ``shapes``) segmentation run
(e.g. ``runs/fashion_scenes_segment`` after ``tfcnn train pipelines/fashion_scenes_segment.toml``).

Why: the run's evaluation says *how much* is wrong (per-class Dice, confusion matrix), not *what
kind* of wrong. A mask can miss an item's class in two ways: the whole item gets another class
(recognition), or parts of it do (inconsistent pixels inside one object). The generated test
scenes know each object (its box and class), so this script regenerates them from the run's own
config (byte-identical: :mod:`tfcnn.data.scenes` is seeded) and measures, with the run's Keras model:

* ``fg_dice``: the run's test foreground Dice (the figure the evaluation reports);
* ``vote_ceiling_fg_dice``: the Dice if every object's predicted-object pixels took that object's
  majority predicted class (an oracle that knows the true objects): how much any per-object
  consistency step (a CRF, a majority filter, instance voting) could add at most;
* ``pooled_vote_fg_dice[k]``: a real, in-graph-able step: class probabilities averaged over a
  k x k window, background probability kept;
* ``flip_tta_fg_dice``: the Dice with the segmenter's own test-time flip (the image's and its
  mirror image's logits averaged, ``segmentation.test_time_flip``; twice the inference cost). A
  run with the flip on (``"test_time_flip": true`` in the line) already has it in ``fg_dice`` and
  every other figure; ``single_pass_fg_dice`` is then its Dice without the flip;
* ``object_accuracy``: the share of objects whose majority predicted class is right, overall, by
  objects per scene, by whether its box intersects another object's (occlusion or contact), by
  object size (longer box side, px) and per class.

The last line is one JSON object with those keys and the machine. Accuracies are deterministic for
a given run; the script times nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SIZE_BINS = ((0, 24), (24, 30), (30, 36), (36, 42), (42, 10_000))
WINDOWS = (7, 15, 23)


def test_scenes(cfg) -> tuple[object, list[str]]:
    """The run's test scenes with their objects (boxes, classes), as its data source drew them,
    and the class names."""
    import dataclasses

    from tfcnn.data import scenes
    from tfcnn.data.builtin import FASHION_MNIST_CLASSES

    sc = cfg.data.scenes
    m = cfg.data.max_objects or sc.most_objects()
    # the splits draw from independent streams: one training scene instead of all leaves the test ones as they were
    one = dataclasses.replace(sc, num_train=1)
    if cfg.data.source == "shapes":
        return scenes.shapes_scenes(one, cfg.data.seed, m)[1], list(scenes.SHAPE_CLASSES)
    train_items, test_items = scenes.load_fashion_items(cfg.data.path)
    return scenes.fashion_scenes(one, cfg.data.seed, train_items, test_items, m)[1], list(FASHION_MNIST_CLASSES)


def pooled_vote(p: np.ndarray, k: int) -> np.ndarray:
    """Background probability kept; the object share ``1 - p0`` split as the k x k window's mean
    class probabilities are (what a fixed in-graph layer could do)."""
    import tensorflow as tf

    q = tf.nn.avg_pool2d(p[..., 1:], k, 1, "SAME").numpy() + 1e-12
    return np.concatenate([p[..., :1], (1 - p[..., :1]) * q / q.sum(-1, keepdims=True)], -1)


def objects(scenes, mask: np.ndarray) -> tuple[list[dict], np.ndarray]:
    """One row per test object (size, class, objects in its scene, majority-class right) and the
    oracle-voted mask: each object's predicted-object pixels set to their majority class."""
    from tfcnn.data.boxes import iou

    size = scenes.masks.shape[1]
    voted = mask.copy()
    rows = []
    for i, boxes in enumerate(scenes.boxes):
        present = boxes[boxes[:, 4] >= 0]
        for j, row in enumerate(present):
            cls = int(row[4])
            y0, x0, y1, x1 = np.round(row[:4] * size).astype(int)
            pixels = np.zeros((size, size), bool)
            pixels[y0:y1, x0:x1] = True
            pixels &= scenes.masks[i] == cls + 1  # the object's visible ink (later objects occlude)
            if not pixels.any():
                continue
            predicted = mask[i][pixels]
            on_object = predicted[predicted > 0]
            majority = int(np.bincount(on_object).argmax()) if on_object.size else 0
            voted[i][pixels & (mask[i] > 0)] = majority
            others = np.delete(present, j, axis=0)
            touches = bool(len(others)) and bool((iou(row[None, :4], others[:, :4]) > 0).any())  # shared area, not an edge
            rows.append({"side": max(y1 - y0, x1 - x0), "cls": cls, "crowd": len(present), "touches": touches,
                         "right": majority == cls + 1})
    return rows, voted


def share(rows: list[dict], **match) -> dict:
    sel = [r for r in rows if all(f(r) for f in match.values())]
    return {"objects": len(sel), "accuracy": round(float(np.mean([r["right"] for r in sel])), 4) if sel else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    args = ap.parse_args()

    from machine import describe  # bench/machine.py, beside this script (imported here: tests import this module)
    from tfcnn.errors import ConfigError
    from tfcnn.models.saved import load_trained_model
    from tfcnn.run import Run
    from tfcnn.tasks import get_task
    from tfcnn.tasks.segmentation_metrics import confusion, mean_dice

    run = Run.open(args.run_dir, need=("config", "model"))
    cfg = run.config()
    if cfg.task != "segmentation" or cfg.data.source not in ("fashion_scenes", "shapes") or cfg.data.scenes.mask_classes != "classes":
        raise ConfigError(
            f"{args.run_dir}: not a segmentation run on generated scenes with per-class masks (task = 'segmentation', "
            "data.source = 'fashion_scenes' or 'shapes', data.scenes.mask_classes = 'classes'): only those know their objects"
        )
    scenes, names = test_scenes(cfg)
    model = load_trained_model(run)
    probabilities = get_task("segmentation", cfg).probabilities  # the evaluation's own softmax, batch by batch
    flip_on = bool(cfg.segmentation.test_time_flip)
    x = scenes.images[..., None].astype(np.float32)
    p = probabilities(model, x)
    k = p.shape[-1]
    truth = scenes.masks.astype(np.int64)

    def dice(mask: np.ndarray) -> float:
        value = float(mean_dice(confusion(mask.astype(np.int64), truth, k)))
        if not np.isfinite(value):
            raise SystemExit("foreground Dice is not finite: the model's outputs are broken")
        return round(value, 4)

    mask = p.argmax(-1)
    rows, voted = objects(scenes, mask)

    def with_flip(on: bool) -> np.ndarray:
        """The task's probabilities with the test-time flip on or off (the run's own when it matches)."""
        if on == flip_on:
            return p
        other = dataclasses.replace(cfg, segmentation=dataclasses.replace(cfg.segmentation, test_time_flip=on))
        return get_task("segmentation", other).probabilities(model, x)

    result = {
        "bench": "segment_errors",
        "run": str(args.run_dir),
        "machine": describe(),
        "test_scenes": len(x),
        "fg_dice": dice(mask),
        "binary_dice": round(float(mean_dice(confusion((mask > 0).astype(np.int64), (truth > 0).astype(np.int64), 2))), 4),
        "vote_ceiling_fg_dice": dice(voted),
        "pooled_vote_fg_dice": {str(w): dice(pooled_vote(p, w).argmax(-1)) for w in WINDOWS},
        "flip_tta_fg_dice": dice(with_flip(True).argmax(-1)),
        "test_time_flip": flip_on,
        "object_accuracy": share(rows),
        "by_objects_per_scene": {str(n): share(rows, c=lambda r, n=n: r["crowd"] == n) for n in sorted({r["crowd"] for r in rows})},
        # boxes that intersect another object's box (occluding, occluded or side by side) vs free ones
        "by_box_overlap": {"free": share(rows, o=lambda r: not r["touches"]), "overlapping": share(rows, o=lambda r: r["touches"])},
        "by_side_px": {f"{lo}-{hi if hi < 10_000 else ''}": share(rows, s=lambda r, lo=lo, hi=hi: lo <= r["side"] < hi)
                       for lo, hi in SIZE_BINS},
        "by_class": {names[c]: share(rows, c=lambda r, c=c: r["cls"] == c)["accuracy"] for c in range(k - 1)},
    }
    if flip_on:  # the same model, one pass per image
        result["single_pass_fg_dice"] = dice(with_flip(False).argmax(-1))
    print(json.dumps(result))


if __name__ == "__main__":
    from tfcnn.errors import TfcnnError

    try:
        main()
    except TfcnnError as err:  # a wrong or unfinished run directory: one line, no traceback
        raise SystemExit(f"segment_errors: {err}") from None
