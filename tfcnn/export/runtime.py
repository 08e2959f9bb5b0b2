"""Running exported artifacts the way their clients do, and timing them at batch 1."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from tfcnn.export.tflite import VARIANTS, LiteRTRunner


def set_tf_threads(threads: int) -> int:
    """Pin TF's intra-op pool (only possible before TF runs its first op); returns what is in effect."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TF already initialised in this process: report the real setting instead
    return tf.config.threading.get_intra_op_parallelism_threads()


def latency_ms(fn: Callable[[], object], runs: int, warmup: int = 5) -> dict[str, float]:
    """Median / p95 / mean wall time of fn() in milliseconds, after warm-up calls."""
    for _ in range(max(warmup, 1)):
        fn()
    times = np.empty(max(runs, 1))
    for i in range(len(times)):
        t = time.perf_counter()
        fn()
        times[i] = (time.perf_counter() - t) * 1000.0
    return {
        "latency_ms_median": round(float(np.median(times)), 4),
        "latency_ms_p95": round(float(np.percentile(times, 95)), 4),
        "latency_ms_mean": round(float(times.mean()), 4),
    }


class SavedModelRunner:
    """serving_default of the version's SavedModel, fed uint8 RGB batches."""

    def __init__(self, version_dir: Path):
        from tfcnn.export.savedmodel import load_savedmodel

        self.loaded = load_savedmodel(version_dir)
        self.sig = self.loaded.signatures["serving_default"]

    def predict(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        import tensorflow as tf

        out = [self.sig(image=tf.constant(images[i : i + batch]))["probabilities"].numpy() for i in range(0, len(images), batch)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def one(self, image: np.ndarray) -> Callable[[], object]:
        import tensorflow as tf

        t = tf.constant(image[None])
        return lambda: self.sig(image=t)["probabilities"].numpy()


class TFLiteRunner:
    def __init__(self, version_dir: Path, variant: str, threads: int):
        self.runner = LiteRTRunner(Path(version_dir) / VARIANTS[variant], threads)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.runner.predict(images)

    def one(self, image: np.ndarray) -> Callable[[], object]:
        return lambda: self.runner.raw(image)


def runner_for(version_dir: Path, fmt: str, threads: int):
    if fmt == "savedmodel":
        return SavedModelRunner(version_dir)
    if fmt in VARIANTS:
        return TFLiteRunner(version_dir, fmt, threads)
    raise ValueError(f"no runner for {fmt}")
