"""Training through tfcnn's real train stage with per-epoch timings, for the benchmarks.

Import it after the environment is final (bench/onednn.py's children set TF_ENABLE_ONEDNN_OPTS
first): it loads TensorFlow.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from tfcnn.config import PipelineConfig
from tfcnn.data import DataBundle, load_data, make_bundle
from tfcnn.models import build_model
from tfcnn.run import Run
from tfcnn.train import train


class EpochTimer(keras.callbacks.Callback):
    """Wall and process-CPU time of each epoch, from the engine's own epoch hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._t0 = self._c0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.wall.append(time.perf_counter() - self._t0)
        self.cpu.append(time.process_time() - self._c0)


def bundle_for(cfg: PipelineConfig, synthetic: bool) -> DataBundle:
    """The pipeline's data, or as many random 28x28x1 images (data.train_subset, default 6,400)."""
    if not synthetic:
        return load_data(cfg.data)
    rng = np.random.default_rng(0)
    n = cfg.data.train_subset or 6400
    x = rng.integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8)
    y = rng.integers(0, 10, size=n).astype(np.int32)
    return make_bundle(cfg.data, (x, y), (x[:64], y[:64]), [f"class_{i}" for i in range(10)], "synthetic")


def train_timed(cfg: PipelineConfig, bundle: DataBundle) -> EpochTimer:
    """Train cfg's model on bundle in a throw-away run directory; the timer holds every epoch."""
    info = bundle.info
    timer = EpochTimer()
    with tempfile.TemporaryDirectory(prefix=f"bench-{cfg.train.engine}-") as run_dir:
        train(
            cfg,
            bundle,
            Run.create(Path(run_dir)),
            lambda: build_model(cfg.model, info.input_shape, info.num_classes, info.mean, info.std),
            callbacks=[timer],
        )
    return timer
