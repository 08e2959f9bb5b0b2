"""Export formats: one module each, registered in :data:`FORMATS` (see :mod:`.base`).

Importing this package registers every built-in format and the "export" config check, so
``config.validate`` rejects an unknown ``export.formats`` name before any data is loaded.
"""

from tfcnn.export.formats.base import (
    FORMATS,
    PREREQUISITES,
    BuildContext,
    ExportFormat,
    Prerequisite,
    Runner,
    check_formats,
    check_skip_clients,
    check_threshold_overrides,
    client_names,
    client_of,
    default_formats,
    names,
    ordered,
    owner_of,
    register,
    thresholds_for,
)
from tfcnn.export.formats import prerequisites as _prerequisites  # noqa: F401
from tfcnn.export.formats import savedmodel as _savedmodel  # noqa: F401
from tfcnn.export.formats import tflite as _tflite  # noqa: F401
from tfcnn.export.formats import onnx as _onnx  # noqa: F401
from tfcnn.export.formats import coreml as _coreml  # noqa: F401

__all__ = [
    "FORMATS",
    "PREREQUISITES",
    "BuildContext",
    "ExportFormat",
    "Prerequisite",
    "Runner",
    "check_formats",
    "check_skip_clients",
    "check_threshold_overrides",
    "client_names",
    "client_of",
    "default_formats",
    "names",
    "ordered",
    "owner_of",
    "register",
    "thresholds_for",
]
