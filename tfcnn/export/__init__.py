"""Export stage: SavedModel (TF Serving), TFLite/LiteRT variants with metadata, CoreML; verify; benchmark.

Modules: `exporter` (atomic, versioned export), `verify` (integrity, thresholds, MediaPipe client
check), `benchmark` (latency), `savedmodel` (TF Serving helpers). Every artifact follows the one
input contract built in `card.input_contract`: uint8 RGB in, softmax probabilities out.
"""

from tfcnn.export.benchmark import benchmark_version
from tfcnn.export.exporter import FORMATS, export_run
from tfcnn.export.savedmodel import predict_savedmodel, rest_predict
from tfcnn.export.verify import verify_version

__all__ = ["FORMATS", "benchmark_version", "export_run", "predict_savedmodel", "rest_predict", "verify_version"]
