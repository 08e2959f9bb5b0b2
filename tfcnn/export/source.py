"""What export and verify read from a run directory (and nothing else)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfcnn import config as config_mod
from tfcnn.config import DataConfig, PipelineConfig
from tfcnn.data.info import DataInfo
from tfcnn.errors import TfcnnError
from tfcnn.rundir import RunDir, read_json


@dataclass
class SourceRun:
    """A trained run: its resolved config, data description, model file and (optional) metrics."""

    root: Path
    cfg: PipelineConfig
    info: DataInfo
    model_path: Path
    metrics: dict[str, Any]

    def load_model(self):
        """The trained Keras model (logits output); compile state is not needed to export."""
        import keras

        try:
            return keras.models.load_model(self.model_path, compile=False)
        except Exception as exc:  # corrupt or foreign file
            raise TfcnnError(f"{self.model_path} could not be loaded ({type(exc).__name__}: {exc}); re-run training") from None


def load_source(run_dir: Path) -> SourceRun:
    rd = RunDir(Path(run_dir))
    if not rd.root.is_dir():
        raise TfcnnError(f"run directory {str(rd.root)!r} does not exist")
    rd.require(rd.config, rd.data, rd.model)
    metrics = read_json(rd.metrics) if rd.metrics.is_file() else {}
    return SourceRun(rd.root.resolve(), config_mod.load_json(rd.config), DataInfo.load(rd.data), rd.model.resolve(), metrics)


def load_bundle(cfg: DataConfig):
    """Re-load the run's data (same config, same seed -> same splits) for calibration and verification."""
    from tfcnn.data import load_data

    return load_data(cfg)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
