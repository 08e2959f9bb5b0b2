"""Synthetic, learnable image data for fast tests (no download, no disk)."""

from __future__ import annotations

import numpy as np


def synthetic_arrays(
    n: int, size: int = 16, channels: int = 1, classes: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images where class k has a bright blob in its own position, plus noise."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % classes).astype(np.int32)
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, size, size, channels)).astype(np.float32)
    cells = int(np.ceil(np.sqrt(classes)))
    step = size // cells
    for i, label in enumerate(y):
        r, c = divmod(int(label), cells)
        x[i, r * step : (r + 1) * step, c * step : (c + 1) * step, :] += 150
    return np.clip(x, 0, 255).astype(np.uint8), y


def write_npz(path, n_train: int = 240, n_test: int = 90, size: int = 16, channels: int = 1, classes: int = 3):
    """An .npz in the layout the numpy source reads: x_train, y_train, x_test, y_test, class_names."""
    xtr, ytr = synthetic_arrays(n_train, size, channels, classes, seed=1)
    xte, yte = synthetic_arrays(n_test, size, channels, classes, seed=2)
    names = np.array([f"class_{i}" for i in range(classes)])
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, class_names=names)
    return path


def crash_converter(*args, **kwargs):
    """Stands in for a native converter that segfaults (run in tfcnn's converter child process)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)


class Interrupted(Exception):
    """Raised by :func:`interrupt_after`'s callback: a crash or a pre-empted machine."""


def interrupt_after(k: int):
    """A Keras callback raising Interrupted at the end of epoch `k` (1-based)."""
    import keras

    class InterruptAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == k:
                raise Interrupted(f"after epoch {k}")

    return InterruptAfter()
