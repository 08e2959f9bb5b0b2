"""What the engines leave about training (the history, the Diagnostics record, TensorBoard logs),
read back as numbers for the figures (:mod:`tfcnn.vis.figures`) and the report.

The engines own these files; this module only reads them, tolerating the optional parts: the
fit engine records no per-layer gradient norms, and early stopping may never fire.
``gradient_norms`` has one layout, the one :class:`tfcnn.train.records.RunRecord` writes::

    {"conv1": [0.8, 0.5, ...], ..., "global": [1.1, 0.7, ...]}

one value per row of the history (null where an epoch has none, e.g. norms switched on at a
resume), so list index i is the history's epoch i + 1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from tfcnn.errors import TfcnnError
from tfcnn.run import Diagnostics, Metrics, Record, Run
from tfcnn.util import log


def read_history(run: Run) -> dict[str, np.ndarray]:
    """The history as column -> float array (blank cells NaN), epoch column guaranteed; {} if none."""
    cols = run.read_history()
    if not cols:
        return {}
    out = {k: np.asarray(v, dtype=float) for k, v in cols.items()}
    if "epoch" not in out:
        out["epoch"] = np.arange(1, len(next(iter(out.values()))) + 1, dtype=float)
    return out


def read_record(run: Run, cls: type[Record]) -> Any:
    """A record of the run, or None when it is missing or unreadable (logged: figures are optional)."""
    try:
        return run.read_optional(cls)
    except TfcnnError as exc:
        log.warning(f"ignoring {run.path(cls.KIND)}: {exc}")
        return None


def gradient_norms(
    diag: Diagnostics | None, layer_order: list[str] | None = None
) -> tuple[list[int], dict[str, list[float]]] | None:
    """(epochs, {layer: norms}) from the Diagnostics record, or None when the run recorded none.

    Layers come back in ``layer_order`` (the model's, input side first; the JSON file has sorted
    keys), the tape engine's whole-model "global" norm last. Null values become NaN.
    """
    raw = diag.gradient_norms if diag is not None else None
    if not isinstance(raw, dict) or not raw:
        return None
    layers = {str(k): [_float(x) for x in v] for k, v in raw.items() if isinstance(v, list)}
    n = max((len(v) for v in layers.values()), default=0)
    if n == 0:
        return None
    layers = {k: v + [math.nan] * (n - len(v)) for k, v in layers.items()}
    rank = {name: i for i, name in enumerate(layer_order or [])}

    def key(name: str) -> tuple:
        if name == "global":
            return (2, 0, ())
        return (0 if name.split("/")[0] in rank else 1, rank.get(name.split("/")[0], 0), _natural_key(name))

    return list(range(1, n + 1)), {k: layers[k] for k in sorted(layers, key=key)}


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def stop_epochs(diag: Diagnostics | None, metrics: Metrics | None = None) -> tuple[int | None, int | None]:
    """(best_epoch, stopped_epoch) from the Diagnostics record, falling back to the Metrics record.

    stopped_epoch is None when training ran all its epochs (no stopping rule fired).
    """

    def pick(key: str) -> int | None:
        for rec in (diag, metrics):
            value = getattr(rec, key, None) if rec is not None else None
            if value is not None:
                try:
                    return int(value)
                except (TypeError, ValueError):
                    pass
        return None

    return pick("best_epoch"), pick("stopped_epoch")


def training_summary(run: Run) -> dict[str, Any]:
    """How training ended (best / stopped epoch, reason, engine), for a task's Evaluation details."""
    diag = read_record(run, Diagnostics)
    metrics = read_record(run, Metrics)
    best_epoch, stopped_epoch = stop_epochs(diag, metrics)
    return {
        "best_epoch": best_epoch,
        "stopped_epoch": stopped_epoch,
        "stop_reason": getattr(diag, "stop_reason", None) or getattr(metrics, "stop_reason", None),
        "engine": getattr(diag, "engine", None) or getattr(metrics, "engine", None),
    }


def read_weight_histograms(
    tb_dir: Path, layer_order: list[str] | None = None, limit: int = 12
) -> dict[str, tuple[np.ndarray, list[np.ndarray]]]:
    """Weight histograms from TensorBoard event files: tag -> (steps, [k x 3 (left, right, count)] per step).

    Keras' TensorBoard callback and tf.summary.histogram both write tensors of bucket
    (left edge, right edge, count); the tag is "<layer>/<weight>/histogram". Kernels are preferred
    over biases and BatchNorm statistics because they are where vanishing/exploding weights show.
    """
    import tensorflow as tf

    tb_dir = Path(tb_dir)
    files = sorted(tb_dir.rglob("events.out.tfevents.*")) if tb_dir.is_dir() else []
    hist_tags: set[str] = set()
    series: dict[str, dict[int, np.ndarray]] = {}
    for f in files:
        for event in _events(f):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "histograms":
                    hist_tags.add(value.tag)
                if value.tag not in hist_tags and not value.tag.endswith("/histogram"):
                    continue
                if not value.HasField("tensor"):
                    continue
                arr = tf.make_ndarray(value.tensor)
                if arr.ndim == 2 and arr.shape[1] == 3:
                    series.setdefault(value.tag, {})[int(event.step)] = arr.astype(np.float64)
    rank = {name: i for i, name in enumerate(layer_order or [])}
    tags = sorted(series, key=lambda t: (rank.get(t.split("/")[0], len(rank)), _natural_key(t)))
    kernels = [t for t in tags if _is_kernel(t)]
    chosen = kernels or tags
    if len(chosen) > limit:  # keep the first and last layers, thin out the middle evenly
        chosen = [chosen[i] for i in np.unique(np.linspace(0, len(chosen) - 1, limit).round().astype(int))]
    return {t: (np.asarray(sorted(series[t])), [series[t][s] for s in sorted(series[t])]) for t in chosen}


def _events(path: Path) -> list:
    """Event protos of one file; a truncated file (training killed mid-write) keeps what was readable."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    out = []
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            out.append(event_pb2.Event.FromString(record.numpy()))
    except tf.errors.DataLossError:
        pass
    return out


def _is_kernel(tag: str) -> bool:
    return any(k in tag for k in ("kernel", "depthwise", "pointwise", "embeddings"))


def _natural_key(tag: str) -> tuple:
    """conv2 before conv10: keep the layer order Keras' auto-numbered names imply."""
    import re

    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", tag))


def histogram_quantiles(hist: np.ndarray, qs: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> list[float]:
    """Quantiles of a bucketed histogram (left, right, count rows), linear within a bucket."""
    left, right, count = hist[:, 0], hist[:, 1], hist[:, 2]
    total = count.sum()
    if total <= 0:
        return [float("nan")] * len(qs)
    cum = np.concatenate([[0.0], np.cumsum(count)]) / total
    out = []
    for q in qs:
        i = int(np.clip(np.searchsorted(cum, q, side="left") - 1, 0, len(count) - 1))
        frac = (q - cum[i]) / max(cum[i + 1] - cum[i], 1e-12)
        out.append(float(left[i] + np.clip(frac, 0.0, 1.0) * (right[i] - left[i])))
    return out
