"""COCO-format detection data: read ``coco:<annotations.json>``, write it with :func:`write_coco`.

Why COCO's JSON: it is what labelling tools (CVAT, Label Studio, Roboflow) export, so a user's
own boxes need no converter. Only what detection needs is read:

* ``images``: ``id``, ``file_name`` (resolved relative to the JSON's directory, or to
  ``data.path`` when given), ``height`` / ``width`` (the file's real size wins for normalising);
* ``annotations``: ``image_id``, ``category_id``, ``bbox = [x, y, width, height]`` in pixels;
  ``iscrowd = 1`` regions and boxes without area are skipped (counted in the notes);
* ``categories``: mapped to contiguous class ids 0..K-1 in ascending category-id order, named
  by their ``name``.

Boxes become normalised ``(ymin, xmin, ymax, xmax)`` clipped to [0, 1] and are padded to
``data.max_objects`` rows (default: the most objects any image has); an image with more is one
DataError naming it. :func:`write_coco` writes the same layout (PNG files under ``images/``),
so tests and users can round-trip generated scenes through it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from tfcnn.data.arrays import most_common_size
from tfcnn.data.boxes import from_xywh_pixels, pad_labels, to_xywh_pixels, valid_rows
from tfcnn.data.images import conform_image, decode_image
from tfcnn.errors import DataError
from tfcnn.util import log


@dataclass
class CocoData:
    """What :func:`read_coco` returns: images uint8 [N, H, W, C], labels float32 [N, M, 5]."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    notes: list[str] = field(default_factory=list)


def write_coco(
    directory: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    json_name: str = "annotations.json",
) -> Path:
    """Write images (uint8 [N, H, W] or [N, H, W, C]) and padded box labels [N, M, 5] as COCO JSON
    plus PNG files under ``directory/images``; returns the JSON's path. Category ids are class id + 1."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    images = np.asarray(images)
    doc: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": k + 1, "name": str(n)} for k, n in enumerate(class_names)],
    }
    ann_id = 1
    for i, (img, lab) in enumerate(zip(images, labels)):
        h, w = img.shape[:2]
        name = f"images/{i:06d}.png"
        pixels = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
        Image.fromarray(np.ascontiguousarray(pixels)).save(directory / name)
        doc["images"].append({"id": i + 1, "file_name": name, "height": int(h), "width": int(w)})
        rows = valid_rows(lab)
        for box, xywh in zip(rows, to_xywh_pixels(rows[:, :4], h, w)):
            doc["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": i + 1,
                    "category_id": int(box[4]) + 1,
                    "bbox": [float(v) for v in xywh],
                    "area": float(xywh[2] * xywh[3]),
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    path = directory / json_name
    path.write_text(json.dumps(doc))
    return path


def _field(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{where}: missing {key!r}; a COCO file needs images, annotations and categories")
    return obj[key]


def read_coco(
    json_path: str | Path,
    image_root: str | Path | None = None,
    max_objects: int | None = None,
    size: Sequence[int] | None = None,
    channels: int | None = None,
) -> CocoData:
    """Images and padded box labels of a COCO detection file (see the module docstring).

    `size` (height, width) resizes every image (default: the most common size, others resized);
    `channels` 1 or 3 converts (default: 3 when any image is colour, else 1).
    """
    path = Path(json_path)
    where = f"coco:{path}"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{where}: no such file; give the path of a COCO annotations JSON") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{where}: not readable as JSON ({exc})") from None
    entries = _field(doc, "images", where)
    annotations = _field(doc, "annotations", where)
    categories = _field(doc, "categories", where)
    if not categories:
        raise DataError(f"{where}: 'categories' is empty; detection needs at least one object class")
    cats = sorted(categories, key=lambda c: int(_field(c, "id", where)))
    class_of = {int(c["id"]): k for k, c in enumerate(cats)}
    names = [str(c.get("name", c["id"])) for c in cats]
    root = Path(image_root) if image_root else path.parent

    by_image: dict[int, list[dict]] = {int(_field(e, "id", where)): [] for e in entries}
    crowd = degenerate = 0
    for a in annotations:
        image_id = int(_field(a, "image_id", where))
        cat = int(_field(a, "category_id", where))
        if image_id not in by_image:
            raise DataError(f"{where}: annotation {a.get('id')} names image_id {image_id}, which is not in 'images'")
        if cat not in class_of:
            raise DataError(f"{where}: annotation {a.get('id')} names category_id {cat}, which is not in 'categories'")
        if a.get("iscrowd", 0):
            crowd += 1
            continue
        x, y, w, h = (float(v) for v in _field(a, "bbox", where))
        if w <= 0 or h <= 0:
            degenerate += 1
            continue
        by_image[image_id].append(a)

    counts = {i: len(v) for i, v in by_image.items()}
    most = max(counts.values(), default=0)
    limit = max_objects if max_objects is not None else max(most, 1)
    for e in entries:
        n = counts[int(e["id"])]
        if n > limit:
            raise DataError(
                f"{where}: image {e.get('file_name')!r} has {n} objects, more than data.max_objects = {limit}; "
                f"raise data.max_objects to at least {most}"
            )

    pixels: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for e in entries:
        file = root / str(_field(e, "file_name", where))
        if not file.is_file():
            raise DataError(
                f"{where}: image file {str(file)!r} does not exist; "
                "set data.path to the directory the file_names are relative to"
            )
        arr = decode_image(file)
        h, w = arr.shape[:2]
        anns = by_image[int(e["id"])]
        boxes = np.clip(from_xywh_pixels(np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4), h, w), 0.0, 1.0)
        classes = np.array([class_of[int(a["category_id"])] for a in anns], np.float32)
        pixels.append(arr)
        labels.append(pad_labels(boxes, classes, limit))
    if not pixels:
        raise DataError(f"{where}: 'images' is empty")
    notes: list[str] = []
    if crowd or degenerate:
        notes.append(f"{where}: skipped {crowd} iscrowd regions and {degenerate} boxes without area")
        log.info("data: %s", notes[-1])
    target = tuple(int(v) for v in size) if size else most_common_size([p.shape[:2] for p in pixels])
    ch = channels or (3 if any(p.shape[-1] == 3 for p in pixels) else 1)
    resized = sum(tuple(p.shape[:2]) != target for p in pixels)
    if resized:
        notes.append(f"{where}: {resized} images resized to {target[0]}x{target[1]} (bilinear; boxes are normalised)")
    stack = np.stack([conform_image(p, target, ch) for p in pixels]).astype(np.uint8)  # type: ignore[arg-type]
    return CocoData(stack, np.stack(labels).astype(np.float32), names, notes)


def object_counts(labels: np.ndarray) -> Counter:
    """How many images hold 0, 1, 2, ... objects (reports, tests)."""
    return Counter(int(v) for v in (np.asarray(labels)[..., 4] >= 0).sum(-1))
