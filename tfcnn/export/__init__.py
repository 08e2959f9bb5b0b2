"""Export stage: every registered format (SavedModel for TF Serving, four TFLite/LiteRT variants,
ONNX, CoreML), verify and benchmark.

Modules: `formats/` (one module per format, registered; the exporter, verify, benchmark, card
and config validation iterate the registry), `exporter` (atomic, versioned export), `verify`
(integrity, thresholds, external clients), `benchmark` (latency), `card` (contract and model
card). Every artifact follows the one input contract built in `card.input_contract`.
"""

from tfcnn import config as _config
from tfcnn.export.formats import FORMATS, check_formats, check_threshold_overrides
from tfcnn.export.benchmark import benchmark_version
from tfcnn.export.exporter import export_run
from tfcnn.export.savedmodel import predict_savedmodel, rest_predict
from tfcnn.export.verify import verify_version
from tfcnn.errors import ConfigError


def _check(cfg) -> None:
    """`export.formats` and `export.thresholds` name registered formats (no I/O)."""
    if cfg.export.formats is not None:
        check_formats(cfg.export.formats, cfg.task, error=ConfigError)
    check_threshold_overrides(cfg.export.thresholds)


_config.register_check("export", _check)

__all__ = ["FORMATS", "benchmark_version", "export_run", "predict_savedmodel", "rest_predict", "verify_version"]
