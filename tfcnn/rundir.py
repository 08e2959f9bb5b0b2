"""The run directory: the one hand-off point between stages.

Every stage reads what an earlier stage wrote here and nothing else, so any stage can be
re-run on its own (`tfcnn evaluate RUN_DIR`, `tfcnn export RUN_DIR`, `tfcnn report RUN_DIR`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfcnn.errors import TfcnnError


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    root: Path

    @property
    def config(self) -> Path:  # resolved PipelineConfig as JSON
        return self.root / "config.json"

    @property
    def data(self) -> Path:  # DataInfo: class names, shapes, mean/std, split sizes, skipped files
        return self.root / "data.json"

    @property
    def model(self) -> Path:  # the trained Keras model (logits output, normalization inside)
        return self.root / "model.keras"

    @property
    def history(self) -> Path:  # one row per epoch: epoch, loss, accuracy, val_loss, val_accuracy, lr
        return self.root / "history.csv"

    @property
    def metrics(self) -> Path:  # test_accuracy, params, train_seconds, epochs_run, engine, ...
        return self.root / "metrics.json"

    @property
    def evaluation(self) -> Path:  # per-class precision/recall/F1, confusion matrix, top-k
        return self.root / "evaluation.json"

    @property
    def diagnostics(self) -> Path:  # training diagnostics: gradient norms per layer per epoch, stop epoch
        return self.root / "diagnostics.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def plots(self) -> Path:  # PNG figures
        return self.root / "plots"

    @property
    def exports(self) -> Path:  # JSON list of export version directories made from this run
        return self.root / "exports.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    def require(self, *paths: Path) -> None:
        """Fail with one line naming the first missing file and the command that makes it."""
        for p in paths:
            if not p.exists():
                raise TfcnnError(f"{p} is missing; run `tfcnn run PIPELINE --out {self.root}` first")


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp file + rename) so readers never see half a file."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise TfcnnError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TfcnnError(f"{path} is not valid JSON ({exc}); delete it and re-run the stage that writes it") from None


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
