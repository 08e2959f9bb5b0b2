"""`tfcnn predict`: classify image files with a trained run, using the same decoding as training.

The run is the only input: its data description (class names, input shape) and its model.
Images go through :func:`tfcnn.data.images.load_image`, the folder source's decoder, so a file
is resized and converted exactly as the training images were.

This module also holds what every predictor shares (an export version's predictor,
:mod:`tfcnn.export.predict`, reuses it): finding image files under folders, batched decoding
in which an unreadable file becomes an error row instead of stopping the batch, progress
(a Keras ``Progbar`` on a terminal; otherwise at most about ten plain ``tfcnn`` log lines, no
escape codes or carriage returns) and the top-k rows, rendered as a table, JSON or CSV.
Every predictor returns the same rows::

    {"image": "path", "top_k": [{"class_id": 2, "label": "cat", "probability": 0.93}, ...], "error": None}
    {"image": "path", "top_k": [], "error": "path: not a readable JPEG/PNG/BMP/GIF image"}
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tfcnn.data.images import IMAGE_EXTENSIONS, load_image
from tfcnn.data.info import DataInfo
from tfcnn.errors import DataError, TfcnnError
from tfcnn.run import Run
from tfcnn.util import first_line, keras_verbose, log

BATCH_SIZE = 256
_LOG_LINES = 10  # at most about this many progress lines for a whole prediction (off a terminal)


def find_images(inputs: Sequence["Path | str"]) -> list[Path]:
    """Image files from files and folders: a file is taken as given, a folder is searched
    recursively for the extensions the folder source reads (hidden files and folders skipped).

    A path that does not exist, or a folder without any image, is one error line. Duplicates
    (a file given twice, or also found under a given folder) are kept once, first place wins.
    """
    found: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            images = _folder_images(path)
            if not images:
                raise TfcnnError(f"folder {str(path)!r} has no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files, searched recursively)")
            found.extend(images)
        else:
            raise TfcnnError(f"image or folder {str(path)!r} does not exist")
    seen: set[Path] = set()
    unique = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def _folder_images(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if not fn.startswith(".") and Path(fn).suffix.lower() in IMAGE_EXTENSIONS:
                out.append(Path(dirpath) / fn)
    return out


def top_k_rows(paths: Sequence[Path], probs: np.ndarray, labels: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    """One result row per image from its score vector (highest first)."""
    k = max(1, min(int(top_k), len(labels)))
    rows = []
    for path, p in zip(paths, np.asarray(probs)):
        order = np.argsort(-p, kind="stable")[:k]
        rows.append(
            {
                "image": str(path),
                "top_k": [{"class_id": int(i), "label": labels[i], "probability": float(p[i])} for i in order],
                "error": None,
            }
        )
    return rows


def error_row(path: Path, message: str) -> dict[str, Any]:
    return {"image": str(path), "top_k": [], "error": message}


class _Progress:
    """A Keras Progbar on a terminal, else one log line per group of batches; nothing when quiet."""

    def __init__(self, total: int, batch_size: int, what: str, enabled: bool | None):
        verbose = keras_verbose() if enabled is None or enabled else 0
        self.total, self.what, self.done, self.failed = total, what, 0, 0
        self.bar = None
        self.lines = verbose == 2
        batches = max(1, -(-total // batch_size))
        self.every = max(1, -(-batches // _LOG_LINES))  # batches per log line
        self.batch = 0
        self.start = time.perf_counter()
        if verbose == 1:
            import keras

            self.bar = keras.utils.Progbar(total, unit_name="image", stateful_metrics=["unreadable"])

    def update(self, n: int, failed: int) -> None:
        self.done += n
        self.failed += failed
        self.batch += 1
        if self.bar is not None:
            self.bar.update(self.done, values=[("unreadable", self.failed)] if self.failed else None)
        elif self.lines and (self.batch % self.every == 0 or self.done >= self.total):
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            bad = f", {self.failed} unreadable" if self.failed else ""
            log.info("predict %s: %d/%d images (%d%%)%s, %.0f images/s", self.what, self.done, self.total,
                     100 * self.done // max(self.total, 1), bad, rate)


def classify(
    images: Sequence["Path | str"],
    *,
    load: Callable[[Path], np.ndarray],
    scores: Callable[[np.ndarray], np.ndarray],
    labels: Sequence[str],
    top_k: int = 3,
    batch_size: int = BATCH_SIZE,
    what: str = "",
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Rows for ``images`` in order: ``load`` decodes one file (raising DataError when it cannot),
    ``scores`` turns a stacked batch into one probability row per image.

    Files are decoded ``batch_size`` at a time in a small thread pool (Pillow releases the GIL),
    so memory stays bounded on a folder of any size. ``progress`` None follows
    :func:`tfcnn.util.keras_verbose` (shown when tfcnn's logging is on), False silences it.
    """
    if batch_size < 1:
        raise TfcnnError(f"batch size must be at least 1, got {batch_size}")
    if not 1 <= top_k <= len(labels):
        raise TfcnnError(f"--top-k {top_k} must be between 1 and the model's {len(labels)} classes")
    paths = [Path(p) for p in images]
    bar = _Progress(len(paths), batch_size, what, progress)
    rows: list[dict[str, Any]] = []

    def decode(path: Path) -> tuple[np.ndarray | None, str | None]:
        try:
            return load(path), None
        except DataError as exc:
            return None, first_line(exc)
        except (OSError, ValueError) as exc:  # a decoder problem load() did not translate
            return None, f"{path}: cannot read ({type(exc).__name__}: {first_line(exc)})"

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            decoded = list(pool.map(decode, chunk))
            ok = [(p, a) for p, (a, _) in zip(chunk, decoded) if a is not None]
            probs = _finite(scores(np.stack([a for _, a in ok])), what) if ok else None
            scored = iter(top_k_rows([p for p, _ in ok], probs, labels, top_k) if ok else [])
            for path, (arr, err) in zip(chunk, decoded):
                rows.append(next(scored) if arr is not None else error_row(path, err or f"{path}: unreadable"))
            bar.update(len(chunk), sum(a is None for a, _ in decoded))
    return rows


def _finite(probs: np.ndarray, what: str) -> np.ndarray:
    """The scores, or one error line when any is NaN/inf: a broken model must not print "nan%"."""
    probs = np.asarray(probs)
    if not np.isfinite(probs).all():
        bad = int((~np.isfinite(probs)).any(axis=-1).sum())
        raise TfcnnError(
            f"the {what or 'model'} outputs are not finite (NaN or inf) for {bad} of {len(probs)} images: "
            "the model's weights are broken; retrain it (tfcnn export refuses such a model)"
        )
    return probs


def predict_images(
    run_dir: "Run | Path | str",
    images: Sequence["Path | str"],
    *,
    top_k: int = 3,
    batch_size: int = BATCH_SIZE,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Top-k (label, probability) for each image file with the run's Keras model, each file
    decoded/resized exactly like the folder source; an unreadable file is an error row."""
    from tfcnn.models.saved import load_trained_model
    from tfcnn.tasks import get_task

    run = Run.open(run_dir, need=("config", "data", "model"))
    info = run.read(DataInfo)
    task = get_task(run.config().task, run.config(), run)  # with a fitted temperature, as the exports
    if not task.predicts_labels:
        raise TfcnnError(
            f"tfcnn predict gives class labels, but {run.root} is a {task.name!r} run; "
            "run its export with the runtime of your choice, or see its report for reconstructions"
        )
    height, width, channels = info.input_shape
    model = load_trained_model(run)

    def scores(batch: np.ndarray) -> np.ndarray:
        # A direct (eager) call: model.predict would retrace its function for every new batch shape.
        return task.outputs_to_scores(np.asarray(model(batch.astype("float32"), training=False)))

    return classify(
        images,
        load=lambda p: load_image(p, size=(height, width), channels=channels),
        scores=scores,
        labels=list(info.class_names),
        top_k=top_k,
        batch_size=batch_size,
        what="keras",
        progress=progress,
    )


# --------------------------------------------------------------------------- output
OUTPUT_KINDS = ("table", "json", "csv")


def render_rows(rows: Sequence[dict[str, Any]], kind: str = "table") -> str:
    """The rows as text: an aligned ``table``, a ``json`` list, or ``csv`` (one row per image:
    image, then class_id/label/probability for each of the top k, then error)."""
    if kind == "json":
        return json.dumps(list(rows), indent=2) + "\n"
    k = max((len(r["top_k"]) for r in rows), default=0)
    if kind == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image", *[f"top{i}_{c}" for i in range(1, k + 1) for c in ("class_id", "label", "probability")], "error"])
        for r in rows:
            cells = [c for t in r["top_k"] for c in (t["class_id"], t["label"], repr(t["probability"]))]
            writer.writerow([r["image"], *cells, *[""] * (3 * k - len(cells)), r.get("error") or ""])
        return buf.getvalue()
    if kind != "table":
        raise TfcnnError(f"output kind {kind!r} is not one of {', '.join(OUTPUT_KINDS)}")
    header = ["image", *[f"top-{i}" for i in range(1, k + 1)]]
    lines = [None if r.get("error") else [r["image"], *[f"{t['label']} {100 * t['probability']:.1f}%" for t in r["top_k"]]] for r in rows]
    widths = [max(len(line[i]) for line in [header, *filter(None, lines)] if i < len(line)) for i in range(k + 1)]
    widths[0] = max([widths[0], *(len(r["image"]) for r in rows)])
    out = [header, *lines]
    text = []
    for r, line in zip([None, *rows], out):
        if line is None:
            text.append(f"{r['image']:<{widths[0]}}  ERROR {r['error']}")
        else:
            text.append("  ".join(f"{c:<{w}}" for c, w in zip(line, widths)).rstrip())
    return "\n".join(text) + "\n"
