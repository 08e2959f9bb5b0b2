"""TFLite model metadata written with the public flatbuffer schemas, without tflite-support.

tflite-support pins an old protobuf and mediapipe's metadata writer needs a native module its
wheel does not ship, so we use only the generated schema classes: the metadata schema from the
mediapipe wheel (loaded by file path so mediapipe itself is not imported) and the TFLite model
schema from ai_edge_litert. The packing follows the TFLite metadata convention every reader
(MediaPipe Tasks, the Task Library, Android Studio) understands:

* the metadata flatbuffer (file identifier ``M001``) becomes a new model buffer, referenced from
  the model's ``metadata`` list under the name ``TFLITE_METADATA``;
* associated files (``labels.txt``) are appended to the model file as an uncompressed zip.
"""

from __future__ import annotations

import importlib.util
import io
import json
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import flatbuffers

from tfcnn.errors import ExportError

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
CONTRACT_METADATA_NAME = "tfcnn_contract"
# CustomMetadata (the JSON contract) needs parser 1.5.0; everything else we write is 1.0.0.
MIN_PARSER_VERSION = "1.5.0"


def _load_by_path(package: str, relative: str, module_name: str) -> ModuleType:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(f"package {package!r} is not installed; it provides the TFLite metadata schema ({relative})")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise ExportError(f"{path} is missing; reinstall {package} (it provides the TFLite metadata schema)")
    mod_spec = importlib.util.spec_from_file_location(module_name, path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=1)
def metadata_fb() -> ModuleType:
    """Generated classes of metadata_schema.fbs (the mediapipe wheel ships them)."""
    return _load_by_path("mediapipe", "tasks/metadata/metadata_schema_py_generated.py", "_tfcnn_metadata_schema_fb")


@lru_cache(maxsize=1)
def model_fb() -> ModuleType:
    """Generated classes of the TFLite model schema (schema.fbs)."""
    try:
        from ai_edge_litert import schema_py_generated

        return schema_py_generated
    except ImportError:  # pragma: no cover - ai_edge_litert is a hard dependency
        from tensorflow.lite.python import schema_py_generated  # type: ignore[no-redef]

        return schema_py_generated


@dataclass
class MetadataSpec:
    """What we say about one TFLite file; the input contract travels as JSON custom metadata."""

    name: str
    version: str
    description: str
    author: str
    license: str
    height: int
    width: int
    input_description: str
    output_description: str
    contract: dict[str, Any] = field(default_factory=dict)
    labels_file: str = "labels.txt"


def build_metadata(spec: MetadataSpec) -> bytes:
    """Serialise ModelMetadata for a single-input image classifier with an axis-label file."""
    fb = metadata_fb()

    image_props = fb.ImagePropertiesT()
    image_props.colorSpace = fb.ColorSpaceType.RGB
    size = fb.ImageSizeT()
    size.width, size.height = spec.width, spec.height
    image_props.defaultSize = size
    in_content = fb.ContentT()
    in_content.contentPropertiesType = fb.ContentProperties.ImageProperties
    in_content.contentProperties = image_props

    # The tensor takes raw 0..255 pixels: the client-side normalisation is the identity, the
    # model's own (mean/std) normalisation is in-graph and described in the custom metadata.
    norm = fb.NormalizationOptionsT()
    norm.mean = [0.0, 0.0, 0.0]
    norm.std = [1.0, 1.0, 1.0]
    unit = fb.ProcessUnitT()
    unit.optionsType = fb.ProcessUnitOptions.NormalizationOptions
    unit.options = norm
    in_stats = fb.StatsT()
    in_stats.max = [255.0]
    in_stats.min = [0.0]

    inp = fb.TensorMetadataT()
    inp.name = "image"
    inp.description = spec.input_description
    inp.content = in_content
    inp.processUnits = [unit]
    inp.stats = in_stats

    out_content = fb.ContentT()
    out_content.contentPropertiesType = fb.ContentProperties.FeatureProperties
    out_content.contentProperties = fb.FeaturePropertiesT()
    out_stats = fb.StatsT()
    out_stats.max = [1.0]
    out_stats.min = [0.0]
    label_file = fb.AssociatedFileT()
    label_file.name = spec.labels_file
    label_file.description = "Class labels, one per line, in output order."
    label_file.type = fb.AssociatedFileType.TENSOR_AXIS_LABELS

    out = fb.TensorMetadataT()
    out.name = "probabilities"
    out.description = spec.output_description
    out.content = out_content
    out.stats = out_stats
    out.associatedFiles = [label_file]

    subgraph = fb.SubGraphMetadataT()
    subgraph.name = "image_classifier"
    subgraph.description = "uint8 RGB image in, softmax probabilities out"
    subgraph.inputTensorMetadata = [inp]
    subgraph.outputTensorMetadata = [out]
    if spec.contract:
        custom = fb.CustomMetadataT()
        custom.name = CONTRACT_METADATA_NAME
        custom.data = list(json.dumps(spec.contract, sort_keys=True).encode())
        subgraph.customMetadata = [custom]

    model = fb.ModelMetadataT()
    model.name = spec.name
    model.description = spec.description
    model.version = spec.version
    model.author = spec.author
    model.license = spec.license
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = MIN_PARSER_VERSION

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=METADATA_IDENTIFIER)
    return bytes(builder.Output())


def populate(model_bytes: bytes, metadata: bytes, files: dict[str, bytes]) -> bytes:
    """Return the model with the metadata buffer added and the associated files zipped on the end."""
    sfb = model_fb()
    if model_bytes[4:8] != MODEL_IDENTIFIER:
        raise ExportError("the converter output is not a TFLite flatbuffer (no TFL3 identifier)")
    model = sfb.ModelT.InitFromObj(sfb.Model.GetRootAs(model_bytes, 0))
    model.buffers = model.buffers or []
    model.metadata = [m for m in (model.metadata or []) if _str(m.name) != METADATA_NAME]
    buf = sfb.BufferT()
    buf.data = list(metadata)
    model.buffers.append(buf)
    entry = sfb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(model_bytes) + len(metadata) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=MODEL_IDENTIFIER)
    out = io.BytesIO(bytes(builder.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


@dataclass
class ReadMetadata:
    """The parts of the metadata tests, verify and the report read back."""

    name: str
    version: str
    description: str
    author: str
    license: str
    min_parser_version: str
    input_name: str
    input_description: str
    color_space: str
    normalization: dict[str, list[float]] | None
    output_name: str
    label_file: str | None
    label_file_type: str | None
    labels: list[str] | None
    contract: dict[str, Any] | None


def read_metadata(tflite_bytes: bytes) -> ReadMetadata:
    """Parse TFLITE_METADATA and the packed label file out of a .tflite (raises ExportError if absent)."""
    sfb, fb = model_fb(), metadata_fb()
    model = sfb.Model.GetRootAs(tflite_bytes, 0)
    meta_buf = None
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _str(entry.Name()) == METADATA_NAME:
            meta_buf = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    if meta_buf is None:
        raise ExportError(f"no {METADATA_NAME} entry in the model; re-export to write metadata")
    if not fb.ModelMetadata.ModelMetadataBufferHasIdentifier(meta_buf, 0):
        raise ExportError(f"{METADATA_NAME} buffer lacks the M001 identifier")
    meta = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAs(meta_buf, 0))
    sub = meta.subgraphMetadata[0]
    inp, out = sub.inputTensorMetadata[0], sub.outputTensorMetadata[0]
    color = None
    if inp.content is not None and inp.content.contentPropertiesType == fb.ContentProperties.ImageProperties:
        color = {v: k for k, v in vars(fb.ColorSpaceType).items() if not k.startswith("_")}[
            inp.content.contentProperties.colorSpace
        ]
    normalization = None
    for unit in inp.processUnits or []:
        if unit.optionsType == fb.ProcessUnitOptions.NormalizationOptions:
            normalization = {"mean": [float(v) for v in unit.options.mean], "std": [float(v) for v in unit.options.std]}
    label_file = label_type = None
    for af in out.associatedFiles or []:
        label_file = _str(af.name)
        label_type = {v: k for k, v in vars(fb.AssociatedFileType).items() if not k.startswith("_")}[af.type]
    labels = None
    if label_file:
        zipped = _zipped_files(tflite_bytes)
        if label_file in zipped:
            labels = zipped[label_file].decode().splitlines()
    contract = None
    for custom in sub.customMetadata or []:
        if _str(custom.name) == CONTRACT_METADATA_NAME:
            contract = json.loads(bytes(bytearray(custom.data)).decode())
    return ReadMetadata(
        name=_str(meta.name),
        version=_str(meta.version),
        description=_str(meta.description),
        author=_str(meta.author),
        license=_str(meta.license),
        min_parser_version=_str(meta.minParserVersion),
        input_name=_str(inp.name),
        input_description=_str(inp.description),
        color_space=color or "UNKNOWN",
        normalization=normalization,
        output_name=_str(out.name),
        label_file=label_file,
        label_file_type=label_type,
        labels=labels,
        contract=contract,
    )


def _zipped_files(data: bytes) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return {n: zf.read(n) for n in zf.namelist()}
    except zipfile.BadZipFile:
        return {}
