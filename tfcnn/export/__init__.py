"""Export stage: every registered format (SavedModel for TF Serving, four TFLite/LiteRT variants,
ONNX, CoreML), verify and benchmark.

Modules: `formats/` (one module per format, registered; the exporter, verify, benchmark, card
and config validation iterate the registry), `exporter` (atomic, versioned export), `verify`
(integrity, thresholds, external clients), `benchmark` (latency), `card` (contract and model
card). Every artifact follows the one input contract built in `card.input_contract`.

Its public names load on first use (PEP 562), so a light reader such as ``tfcnn runs`` can use
:mod:`tfcnn.export.card` helpers without importing TensorFlow and every converter.
"""

from typing import Any as _Any

from tfcnn import config as _config
from tfcnn.errors import ConfigError

_PUBLIC = {
    "FORMATS": "tfcnn.export.formats",
    "check_formats": "tfcnn.export.formats",
    "check_threshold_overrides": "tfcnn.export.formats",
    "benchmark_version": "tfcnn.export.benchmark",
    "export_run": "tfcnn.export.exporter",
    "predict_savedmodel": "tfcnn.export.savedmodel",
    "rest_predict": "tfcnn.export.savedmodel",
    "verify_version": "tfcnn.export.verify",
}


def __getattr__(name: str) -> _Any:
    """The public names, imported on first use."""
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'tfcnn.export' has no attribute {name!r}")


def _check(cfg) -> None:
    """`export.formats` and `export.thresholds` name registered formats; `export.int8_keep_float`
    holds regular expressions (no I/O)."""
    from tfcnn.export.formats import check_formats, check_skip_clients, check_threshold_overrides

    from tfcnn.tasks import get_task

    if cfg.export.formats is not None:
        check_formats(cfg.export.formats, cfg.task, error=ConfigError)
    check_threshold_overrides(cfg.export.thresholds, get_task(cfg.task).limit_keys)
    check_skip_clients(cfg.export.skip_clients)
    import re

    for i, pattern in enumerate(cfg.export.int8_keep_float):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"export.int8_keep_float[{i}] = {pattern!r} is not a regular expression ({exc}); e.g. 'block14_project'") from None


_config.register_check("export", _check)

__all__ = ["FORMATS", "benchmark_version", "export_run", "predict_savedmodel", "rest_predict", "verify_version"]
