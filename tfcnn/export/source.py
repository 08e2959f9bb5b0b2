"""What export and verify read from a run (and nothing else): config, data description, model, metrics.

Export and verify take either the pipeline's :class:`~tfcnn.run.Run` (sharing its decoded data
bundle, so int8 calibration and verification do not decode the data set again) or a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfcnn.config import PipelineConfig
from tfcnn.data.info import DataInfo
from tfcnn.run import Metrics, Run


@dataclass
class SourceRun:
    """A trained run: its resolved config, data description, model file and (optional) metrics."""

    run: Run
    cfg: PipelineConfig
    info: DataInfo
    metrics: dict[str, Any]  # metrics.json's keys (empty when the run has none yet)

    @property
    def root(self) -> Path:
        return self.run.root.resolve()

    @property
    def model_path(self) -> Path:
        return self.run.path("model").resolve()

    def load_model(self):
        """The trained Keras model (logits output); compile state is not needed to export."""
        from tfcnn.models.saved import load_trained_model

        return load_trained_model(self.run)


def load_source(run: Run | Path) -> SourceRun:
    """Open a run for export/verify, with one clear line when something it needs is missing."""
    r = Run.open(run, need=("config", "data", "model"))
    metrics = r.read(Metrics).to_dict() if r.has("metrics") else {}
    return SourceRun(r, r.config(), r.read(DataInfo), metrics)


def bundle_of(run: Run):
    """The run's data bundle, decoded once per Run and shared by every stage of one process."""
    from tfcnn.data import bundle_for

    return bundle_for(run)
