"""Timing exported artifacts at batch 1 with fixed threads (the runners live with their formats)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np



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
