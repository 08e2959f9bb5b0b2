"""`tfcnn runs`: every run under a folder side by side, as a table, CSV or JSON, and for TensorBoard.

Why a listing and not only TensorBoard: after a sweep (``tfcnn tune``) or a week of experiments
the question is "which run was best, with which settings, and did it ship?", which needs the
settings (config.json), the results (metrics.json) and the exports (exports.json, each version's
model card) of each run in one row. Everything is read through :class:`tfcnn.run.Run` and its
records; a run whose files are unreadable still gets a row, with the problem in its ``note``.

``--hparams DIR`` writes one TensorBoard HParams log per run under DIR (never into the runs
themselves), so ``tensorboard --logdir DIR`` shows the settings against the final metrics.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from tfcnn.errors import TfcnnError
from tfcnn.run import FILES, Metrics, Run
from tfcnn.util import ensure_dir, log

# Settings worth a column: short name -> dotted key in config.json.
SETTINGS: dict[str, str] = {
    "engine": "train.engine",
    "optimizer": "train.optimizer",
    "lr": "train.learning_rate",
    "schedule": "train.schedule",
    "epochs": "train.epochs",
    "batch": "data.batch_size",
    "width": "model.width",
    "dropout": "model.dropout",
    "l2": "model.l2",
    "smoothing": "train.label_smoothing",
    "seed": "train.seed",
}
COLUMNS: tuple[str, ...] = (
    "run", "task", "model", "params", *SETTINGS, "augment", "score", "score_name", "test_loss",
    "epochs_run", "best_epoch", "train_seconds", "exported", "verified", "note",
)


def find_runs(root: "Path | str") -> list[Path]:
    """Run directories (those with a config.json) under ``root``, itself included, sorted by path.

    The walk does not descend into a run (its checkpoints and plots are not runs), nor into
    hidden folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise TfcnnError(f"runs folder {str(root)!r} does not exist; pass the folder holding your run directories (default runs/)")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if FILES["config"] in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found)


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _score(metrics: Metrics) -> tuple[str, Any]:
    """The run's headline test number: test_accuracy for a classifier, else the first other test_* score."""
    scores = metrics.scores
    if "test_accuracy" in scores:
        return "test_accuracy", scores["test_accuracy"]
    for key in sorted(scores):
        if key.startswith("test_") and key != "test_loss" and isinstance(scores[key], (int, float)):
            return key, scores[key]
    return "", None


def _augment(run: Run) -> str:
    """The augmentations that were on, e.g. "flip,mixup" ("-" for none)."""
    try:
        aug = run.config().data.augment
    except TfcnnError:
        return "?"
    summary = aug.summary() if hasattr(aug, "summary") else {k: v for k, v in vars(aug).items() if v}
    ops = [k for k in summary if not k.endswith(("_prob", "_scale", "_ratio", "_area", "_aspect", "_value", "_sigma", "_magnitude"))]
    return ",".join(ops) or "-"


def run_row(path: Path, root: Path) -> dict[str, Any]:
    """One row for the run at ``path`` (name relative to ``root``); unreadable parts go into ``note``."""
    from tfcnn.export.repository import read_card

    row: dict[str, Any] = {c: None for c in COLUMNS}
    row["run"] = str(path.relative_to(root)) if path != root else path.name
    notes: list[str] = []
    run = Run(path)
    try:
        cfg = run.read_json("config")
    except TfcnnError as exc:
        cfg = {}
        notes.append(str(exc))
    row["task"] = cfg.get("task", "classification") if cfg else None
    row["model"] = _get(cfg, "model.name")
    for short, dotted in SETTINGS.items():
        row[short] = _get(cfg, dotted)
    row["augment"] = _augment(run) if cfg else None
    try:
        metrics = run.read_optional(Metrics)
        if metrics is None:
            notes.append("not trained yet (no metrics.json)")
    except TfcnnError as exc:
        metrics = None
        notes.append(str(exc))
    if metrics is not None:
        row["params"] = metrics.params or None
        row["score_name"], row["score"] = _score(metrics)
        row["test_loss"] = metrics.scores.get("test_loss")
        row["epochs_run"] = metrics.epochs_run
        row["best_epoch"] = metrics.best_epoch
        row["train_seconds"] = metrics.train_seconds
    try:
        versions = run.exports()
    except TfcnnError as exc:
        versions = []
        notes.append(str(exc))
    cards = [(v, read_card(Path(v))) for v in versions]
    present = [(v, c) for v, c in cards if c is not None]
    row["exported"] = len(present)
    if present:
        latest = present[-1][1].get("metrics", {})
        row["verified"] = {True: "passed", False: "FAILED"}.get(latest.get("verification_passed"), "not run")
    if len(present) < len(cards):
        notes.append(f"{len(cards) - len(present)} recorded export version(s) are gone")
    row["note"] = "; ".join(notes) or None
    return row


def list_runs(root: "Path | str" = "runs", *, sort: str = "score", descending: bool | None = None) -> list[dict[str, Any]]:
    """Rows for every run under ``root``, sorted by ``sort`` (a column; missing values last).

    ``descending`` defaults to True for the score and False for anything else.
    """
    if sort not in COLUMNS:
        raise TfcnnError(f"cannot sort by {sort!r}; choose one of {', '.join(COLUMNS)}")
    root = Path(root)
    rows = [run_row(p, root) for p in find_runs(root)]
    desc = (sort == "score") if descending is None else descending

    def missing(row: dict[str, Any]) -> bool:
        v = row.get(sort)
        return v is None or (isinstance(v, float) and math.isnan(v))

    present = [r for r in rows if not missing(r)]
    # numbers by value, anything else (names, mixed) by its text
    numeric = all(isinstance(r[sort], (int, float)) for r in present)
    present.sort(key=lambda r: r[sort] if numeric else str(r[sort]), reverse=desc)
    return present + [r for r in rows if missing(r)]


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render(rows: Sequence[dict[str, Any]], kind: str = "table", columns: Sequence[str] = COLUMNS) -> str:
    """The rows as an aligned ``table`` (the note last, unpadded), ``csv`` or ``json``."""
    if kind == "json":
        return json.dumps(list(rows), indent=2, default=str) + "\n"
    if kind == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: "" if r.get(c) is None else r[c] for c in columns})
        return buf.getvalue()
    if kind != "table":
        raise TfcnnError(f"output kind {kind!r} is not one of table, csv, json")
    names = {r.get("score_name") for r in rows if r.get("score") is not None}
    one_name = len(names) == 1
    shown = [c for c in columns if not (c == "score_name" and one_name) and any(r.get(c) is not None for r in rows)] or ["run"]
    header = {c: (next(iter(names)) if c == "score" and one_name else c) for c in shown}
    cells = [[_cell(r.get(c)) for c in shown] for r in rows]
    widths = [max(len(header[c]), *(len(line[i]) for line in cells)) for i, c in enumerate(shown)]
    lines = ["  ".join(f"{header[c]:<{w}}" for c, w in zip(shown, widths)).rstrip()]
    lines += ["  ".join(f"{v:<{w}}" for v, w in zip(line, widths)).rstrip() for line in cells]
    return "\n".join(lines) + "\n"


def write_hparams(rows: Sequence[dict[str, Any]], logdir: "Path | str") -> Path:
    """One TensorBoard HParams run per row under ``logdir`` (settings as hparams, results as metrics)."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    logdir = ensure_dir(Path(logdir))
    metrics = ("score", "test_loss", "epochs_run", "train_seconds")
    for row in rows:
        params = {k: row[k] for k in (*SETTINGS, "model", "task", "augment") if isinstance(row.get(k), (int, float, str, bool))}
        sub = logdir / row["run"].replace(os.sep, "__")
        with tf.summary.create_file_writer(str(sub)).as_default():
            hp.hparams(params, trial_id=row["run"])
            for m in metrics:
                v = row.get(m)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    tf.summary.scalar(m, float(v), step=0)
    log.info("runs: HParams of %d runs written under %s (tensorboard --logdir %s)", len(rows), logdir, logdir)
    return logdir
