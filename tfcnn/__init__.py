"""tfcnn: Keras functional CNNs from tf.data to TF Serving, LiteRT, ONNX and CoreML, with verified exports.

Stages live in subpackages and hand off through the run directory (:class:`tfcnn.run.Run`), in
one direction: config -> util/run -> data -> models -> tasks -> train -> evaluate -> export ->
vis -> pipeline/cli (``tests/test_layering.py`` enforces it).

The public API for your own training scripts is loaded lazily (PEP 562), so ``import tfcnn`` stays
cheap and ``import tfcnn.data`` does not pull in every stage::

    import tfcnn
    result = tfcnn.train_model(model, train_ds, val_ds, epochs=10, l2=1e-4, early_stopping={"patience": 3})
    version_dir = tfcnn.export_model(model, labels=names, test=(x_test, y_test), out="export", name="mine")
    tfcnn.verify(version_dir)
"""

import os as _os
from typing import Any as _Any

# TensorFlow's x86 wheels enable oneDNN's kernels by default only on CPUs with AVX512-VNNI/BF16
# or AMX. They trained the main job's model 1.56x faster in a train-step probe on an AVX2-only
# 2-vCPU EPYC, and 1.32x on an AVX512 one (bench/onednn.py), so tfcnn opts in unless the user
# already chose. The flag is read when TensorFlow loads: no effect if it was imported first.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"

__all__ = [
    "Run",
    "benchmark",
    "export_model",
    "load_config",
    "predict",
    "run_pipeline",
    "setup_logging",
    "train_model",
    "verify",
]


def __getattr__(name: str) -> _Any:
    """The public names, imported on first use."""
    if name == "train_model":
        from tfcnn.train.api import train_model

        return train_model
    if name == "export_model":
        from tfcnn.export.external import export_model

        return export_model
    if name == "verify":
        from tfcnn.export.verify import verify_version

        return verify_version
    if name == "benchmark":
        from tfcnn.export.benchmark import benchmark_version

        return benchmark_version
    if name == "predict":
        from tfcnn.prediction import predict_images

        return predict_images
    if name == "run_pipeline":
        from tfcnn.pipeline import run_pipeline

        return run_pipeline
    if name == "load_config":
        from tfcnn.config import load

        return load
    if name == "Run":
        from tfcnn.run import Run

        return Run
    if name == "setup_logging":
        from tfcnn.util import setup_logging

        return setup_logging
    raise AttributeError(f"module 'tfcnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
