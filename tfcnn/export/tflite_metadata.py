"""TFLite model metadata written with the public flatbuffer schemas, without tflite-support.

tflite-support pins an old protobuf and mediapipe's metadata writer needs a native module its
wheel does not ship, so we use only the generated schema classes: the metadata schema from the
mediapipe wheel (loaded by file path so mediapipe itself is not imported) and the TFLite model
schema from ai_edge_litert. The packing follows the TFLite metadata convention every reader
(MediaPipe Tasks, the Task Library, Android Studio) understands:

* the metadata flatbuffer (file identifier ``M001``) becomes a new model buffer, referenced from
  the model's ``metadata`` list under the name ``TFLITE_METADATA``;
* associated files (``labels.txt``) are appended to the model file as an uncompressed zip.

Two output layouts are written. A classifier: one ``probabilities`` tensor with labels.txt as
TENSOR_AXIS_LABELS (what MediaPipe's ImageClassifier reads). A detector: the four tensors of
TFLite's SSD post-processing convention, described the way MediaPipe Tasks' ObjectDetector
(``DetectionPostprocessingGraph``) reads them:

* the subgraph must have exactly 4 outputs (2 would mean "NMS outside the model") and exactly 4
  output TensorMetadata; MediaPipe finds each by *name* ("location", "category", "score",
  "number of detections") and uses that entry's position in the list as the index into the
  interpreter's output tensors, so the list must follow the flatbuffer's output order, which
  for a converted multi-output signature is not the signature's (alphabetical) order;
* "location" needs BoundingBoxProperties, type BOUNDARIES, coordinate type RATIO, and ``index``
  giving where left, top, right, bottom sit in each box row: [1, 0, 3, 2] for our
  (ymin, xmin, ymax, xmax);
* the label file must hang off "category" as TENSOR_VALUE_LABELS (the classifier's
  TENSOR_AXIS_LABELS is for the out-of-model-NMS layout and is ignored here); without it
  MediaPipe fills only the category index;
* no ScoreThresholdingOptions: the model already applied its threshold, and MediaPipe's default
  without one is -FLT_MAX (keep everything the model returns);
* the "detection_result" output tensor group over location, category and score is what
  MediaPipe's own metadata writer adds; the C++ reader does not need it, Android Studio's
  model viewer shows it.

A segmenter: ``class_probabilities`` [1, H, W, K + 1] and ``mask`` [1, H, W], described the way
MediaPipe Tasks' ImageSegmenter (``ImageSegmenterGraph`` and its
``TensorsToSegmentationCalculator``) reads them:

* it takes the *last* output tensor of the subgraph as the per-class confidences (the number of
  confidence masks is its last dimension) and the *last* output TensorMetadata for the labels;
  with exactly two outputs it reads the *first* as a float "quality score" vector and ignores
  it. So the probabilities must be the flatbuffer's last output (:func:`move_output_last`
  reorders the subgraph's output list when the converter put them first; signatures address
  tensors by index and are unaffected) and their TensorMetadata the last entry;
* the labels hang off the probabilities as TENSOR_AXIS_LABELS, one line per channel: MediaPipe
  numbers them from channel 0, which is our background, so that file
  (``segmentation_labels.txt``) starts with ``background``; labels.txt (without background,
  class i + 1 = line i, our contract) stays packed too, as a model-level associated file;
* custom metadata ``SEGMENTER_METADATA`` (an ``ImageSegmenterOptions`` flatbuffer, identifier
  ``V001``) with activation NONE: the model already applies softmax; without the entry
  MediaPipe warns and also assumes NONE, and SOFTMAX would apply it a second time.
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

# Our detection output names -> the TensorMetadata names MediaPipe's ObjectDetector looks up.
DETECTION_TENSOR_NAMES: dict[str, str] = {
    "boxes": "location",
    "classes": "category",
    "scores": "score",
    "num_detections": "number of detections",
}
# Positions of left (xmin), top (ymin), right (xmax), bottom (ymax) in a (ymin, xmin, ymax, xmax) row.
BOX_CORNER_INDEX = (1, 0, 3, 2)
DETECTION_GROUP_NAME = "detection_result"  # the group name MediaPipe's metadata writer uses

# Segmentation: our output names (tfcnn.tasks.segmentation) and what MediaPipe's ImageSegmenter needs.
SEGMENTATION_PROBABILITIES = "class_probabilities"
SEGMENTATION_MASK = "mask"
SEGMENTATION_LABELS_FILE = "segmentation_labels.txt"  # background + labels.txt, one per channel
BACKGROUND_LABEL = "background"
SEGMENTER_METADATA_NAME = "SEGMENTER_METADATA"  # the custom metadata name ImageSegmenterGraph looks up
SEGMENTER_OPTIONS_IDENTIFIER = b"V001"
SEGMENTER_ACTIVATION_NONE = 0  # mediapipe.tasks.Activation: NONE 0, SIGMOID 1, SOFTMAX 2


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
def segmenter_fb() -> ModuleType:
    """Generated classes of image_segmenter_metadata_schema.fbs (ImageSegmenterOptions)."""
    return _load_by_path(
        "mediapipe", "tasks/metadata/image_segmenter_metadata_schema_py_generated.py", "_tfcnn_segmenter_metadata_fb"
    )


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
    # "classification" (one probabilities tensor), "detection" (the four SSD-style tensors) or
    # "segmentation" (class_probabilities and mask).
    kind: str = "classification"
    # Detection and segmentation: our output names (boxes, classes, scores, num_detections; or
    # class_probabilities, mask) in the converted flatbuffer's output tensor order, from
    # :func:`output_tensor_order` (segmentation: after :func:`move_output_last`).
    output_order: tuple[str, ...] = ()
    # Segmentation: the file with one label per probabilities channel, background first.
    segmentation_labels_file: str = SEGMENTATION_LABELS_FILE


def build_metadata(spec: MetadataSpec) -> bytes:
    """Serialise ModelMetadata for a single-input image model: a classifier with an axis-label
    file, a detector (``spec.kind == "detection"``) with the four SSD-style outputs, or a
    segmenter (``"segmentation"``) with per-pixel probabilities (last) and mask."""
    fb = metadata_fb()
    if spec.kind == "detection":
        outputs = _detection_outputs(spec)
        subgraph_name, subgraph_description = "object_detector", "uint8 RGB image in, boxes, classes, scores and count out"
    elif spec.kind == "segmentation":
        outputs = _segmentation_outputs(spec)
        subgraph_name, subgraph_description = "image_segmenter", "uint8 RGB image in, per-pixel softmax and argmax mask out"
    elif spec.kind == "classification":
        outputs = [_classifier_output(spec)]
        subgraph_name, subgraph_description = "image_classifier", "uint8 RGB image in, softmax probabilities out"
    else:
        raise ExportError(
            f"no TFLite metadata layout for output kind {spec.kind!r}; expected classification, detection or segmentation"
        )

    subgraph = fb.SubGraphMetadataT()
    subgraph.name = subgraph_name
    subgraph.description = subgraph_description
    subgraph.inputTensorMetadata = [_image_input(spec)]
    subgraph.outputTensorMetadata = outputs
    if spec.kind == "detection":
        group = fb.TensorGroupT()
        group.name = DETECTION_GROUP_NAME
        group.tensorNames = [DETECTION_TENSOR_NAMES[k] for k in ("boxes", "classes", "scores")]
        subgraph.outputTensorGroups = [group]
    customs = []
    if spec.kind == "segmentation":
        customs.append(_segmenter_options())
    if spec.contract:
        custom = fb.CustomMetadataT()
        custom.name = CONTRACT_METADATA_NAME
        custom.data = list(json.dumps(spec.contract, sort_keys=True).encode())
        customs.append(custom)
    if customs:
        subgraph.customMetadata = customs

    model = fb.ModelMetadataT()
    model.name = spec.name
    model.description = spec.description
    model.version = spec.version
    model.author = spec.author
    model.license = spec.license
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = MIN_PARSER_VERSION
    if spec.kind == "segmentation":  # labels.txt as our contract has it (no background line)
        model.associatedFiles = [
            _label_file(
                spec, fb.AssociatedFileType.DESCRIPTIONS,
                "Class labels without the background, one per line: class i + 1 of class_probabilities and mask is line i.",
            )
        ]

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=METADATA_IDENTIFIER)
    return bytes(builder.Output())


def _image_input(spec: MetadataSpec) -> Any:
    """The uint8 RGB image input, the same for every task."""
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
    return inp


def _label_file(spec: MetadataSpec, file_type: int, description: str) -> Any:
    fb = metadata_fb()
    label_file = fb.AssociatedFileT()
    label_file.name = spec.labels_file
    label_file.description = description
    label_file.type = file_type
    return label_file


def _classifier_output(spec: MetadataSpec) -> Any:
    fb = metadata_fb()
    out_content = fb.ContentT()
    out_content.contentPropertiesType = fb.ContentProperties.FeatureProperties
    out_content.contentProperties = fb.FeaturePropertiesT()
    out_stats = fb.StatsT()
    out_stats.max = [1.0]
    out_stats.min = [0.0]

    out = fb.TensorMetadataT()
    out.name = "probabilities"
    out.description = spec.output_description
    out.content = out_content
    out.stats = out_stats
    out.associatedFiles = [
        _label_file(spec, fb.AssociatedFileType.TENSOR_AXIS_LABELS, "Class labels, one per line, in output order.")
    ]
    return out


def _detection_outputs(spec: MetadataSpec) -> list[Any]:
    """The four detection TensorMetadata, in the flatbuffer's output order (MediaPipe indexes the
    interpreter's outputs by each entry's position in this list)."""
    fb = metadata_fb()
    order = tuple(spec.output_order)
    if sorted(order) != sorted(DETECTION_TENSOR_NAMES):
        raise ExportError(
            f"detection metadata needs the converted model's output order of "
            f"{', '.join(DETECTION_TENSOR_NAMES)}; got {list(order)}"
        )

    def value_range() -> Any:
        # The dimension that runs over detections (dimension 1 of [1, D, ...]), as the SSD writers say.
        rng = fb.ValueRangeT()
        rng.min, rng.max = 2, 2
        return rng

    def feature_content() -> Any:
        content = fb.ContentT()
        content.contentPropertiesType = fb.ContentProperties.FeatureProperties
        content.contentProperties = fb.FeaturePropertiesT()
        return content

    def tensor(key: str, description: str, content: Any) -> Any:
        md = fb.TensorMetadataT()
        md.name = DETECTION_TENSOR_NAMES[key]
        md.description = description
        md.content = content
        return md

    made: dict[str, Any] = {}
    box = fb.BoundingBoxPropertiesT()
    box.index = list(BOX_CORNER_INDEX)
    box.type = fb.BoundingBoxType.BOUNDARIES
    box.coordinateType = fb.CoordinateType.RATIO
    location = fb.ContentT()
    location.contentPropertiesType = fb.ContentProperties.BoundingBoxProperties
    location.contentProperties = box
    location.range = value_range()
    made["boxes"] = tensor(
        "boxes", "Boxes (ymin, xmin, ymax, xmax), normalised to 0..1 of the model input, best first.", location
    )

    category = feature_content()
    category.range = value_range()
    made["classes"] = tensor("classes", "Class id of each box (float), an index into the label file.", category)
    made["classes"].associatedFiles = [
        _label_file(spec, fb.AssociatedFileType.TENSOR_VALUE_LABELS, "Class labels, one per line, indexed by the category value.")
    ]

    score = feature_content()
    score.range = value_range()
    made["scores"] = tensor("scores", "Score of each box in 0..1.", score)
    stats = fb.StatsT()
    stats.max, stats.min = [1.0], [0.0]
    made["scores"].stats = stats

    made["num_detections"] = tensor(
        "num_detections", "How many rows are real detections; the rest is zero padding.", feature_content()
    )
    return [made[k] for k in order]


def _segmenter_options() -> Any:
    """CustomMetadata SEGMENTER_METADATA: ImageSegmenterOptions(activation NONE), as MediaPipe's writer packs it."""
    fb, sfb = metadata_fb(), segmenter_fb()
    options = sfb.ImageSegmenterOptionsT()
    options.activation = SEGMENTER_ACTIVATION_NONE
    builder = flatbuffers.Builder(64)
    builder.Finish(options.Pack(builder), file_identifier=SEGMENTER_OPTIONS_IDENTIFIER)
    custom = fb.CustomMetadataT()
    custom.name = SEGMENTER_METADATA_NAME
    custom.data = list(bytes(builder.Output()))
    return custom


def _segmentation_outputs(spec: MetadataSpec) -> list[Any]:
    """class_probabilities and mask TensorMetadata in the flatbuffer's output order, which must end
    with the probabilities (MediaPipe reads the last output tensor and the last metadata entry)."""
    fb = metadata_fb()
    order = tuple(spec.output_order)
    if sorted(order) != sorted((SEGMENTATION_PROBABILITIES, SEGMENTATION_MASK)) or order[-1] != SEGMENTATION_PROBABILITIES:
        raise ExportError(
            f"segmentation metadata needs the converted model's output order ending with {SEGMENTATION_PROBABILITIES} "
            f"(MediaPipe ImageSegmenter reads the last output; see move_output_last); got {list(order)}"
        )

    def image_content() -> Any:  # a stack of grayscale maps, as MediaPipe's SegmentationMaskMd says
        props = fb.ImagePropertiesT()
        props.colorSpace = fb.ColorSpaceType.GRAYSCALE
        content = fb.ContentT()
        content.contentPropertiesType = fb.ContentProperties.ImageProperties
        content.contentProperties = props
        rng = fb.ValueRangeT()
        rng.min, rng.max = 1, 2
        content.range = rng
        return content

    probs = fb.TensorMetadataT()
    probs.name = SEGMENTATION_PROBABILITIES
    probs.description = spec.output_description
    probs.content = image_content()
    stats = fb.StatsT()
    stats.max, stats.min = [1.0], [0.0]
    probs.stats = stats
    axis = fb.AssociatedFileT()
    axis.name = spec.segmentation_labels_file
    axis.description = "One label per probabilities channel, background first: line c names channel c."
    axis.type = fb.AssociatedFileType.TENSOR_AXIS_LABELS
    probs.associatedFiles = [axis]

    mask = fb.TensorMetadataT()
    mask.name = SEGMENTATION_MASK
    mask.description = "Argmax of class_probabilities per pixel (int32): 0 background, c = line c of the axis labels."
    mask.content = image_content()
    made = {SEGMENTATION_PROBABILITIES: probs, SEGMENTATION_MASK: mask}
    return [made[k] for k in order]


def segmentation_label_lines(labels: list[str]) -> list[str]:
    """The probabilities' axis labels: background, then labels.txt."""
    return [BACKGROUND_LABEL, *labels]


def move_output_last(model_bytes: bytes, name: str, signature: str = "serving_default") -> bytes:
    """The model with the subgraph output called ``name`` (signature output name) moved to the end of
    the subgraph's output list; nothing else changes (signatures refer to tensors by index).

    MediaPipe's ImageSegmenter reads the last output tensor as the confidences, and the converter
    orders a multi-output signature its own way. Returns ``model_bytes`` untouched when it already
    is last; raises ExportError when no output has that name.
    """
    order = output_tensor_order(model_bytes, signature)
    if name not in order:
        raise ExportError(f"the TFLite model has no output {name!r} (outputs: {order})")
    if order[-1] == name:
        return model_bytes
    sfb = model_fb()
    model = sfb.ModelT.InitFromObj(sfb.Model.GetRootAs(model_bytes, 0))
    outputs = list(model.subgraphs[0].outputs)
    k = order.index(name)
    model.subgraphs[0].outputs = outputs[:k] + outputs[k + 1 :] + [outputs[k]]
    builder = flatbuffers.Builder(len(model_bytes) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=MODEL_IDENTIFIER)
    return bytes(builder.Output())


def output_tensor_order(model_bytes: bytes, signature: str = "serving_default") -> list[str]:
    """The converted model's subgraph outputs, by signature output name, in flatbuffer order.

    The converter orders a multi-output signature's tensors its own way (neither the dict's nor
    alphabetical), while metadata is matched to outputs by position: so the order is read from
    the file. Outputs outside the signature fall back to their tensor names.
    """
    sfb = model_fb()
    model = sfb.Model.GetRootAs(model_bytes, 0)
    if model.SubgraphsLength() < 1:
        raise ExportError("the TFLite model has no subgraph")
    sub = model.Subgraphs(0)
    outputs = [int(sub.Outputs(i)) for i in range(sub.OutputsLength())]
    by_tensor: dict[int, str] = {}
    for s in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(s)
        if sig.SubgraphIndex() != 0 or (by_tensor and _str(sig.SignatureKey()) != signature):
            continue
        by_tensor = {int(sig.Outputs(j).TensorIndex()): _str(sig.Outputs(j).Name()) for j in range(sig.OutputsLength())}
        if _str(sig.SignatureKey()) == signature:
            break
    return [by_tensor.get(t) or _str(sub.Tensors(t).Name()) for t in outputs]


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
class OutputMetadata:
    """One output TensorMetadata as read back (a detector has four, in flatbuffer output order)."""

    name: str
    content: str  # the ContentProperties type: FeatureProperties, BoundingBoxProperties, ...
    label_file: str | None = None
    label_file_type: str | None = None
    box_index: list[int] | None = None  # BoundingBoxProperties: left, top, right, bottom positions
    box_type: str | None = None
    coordinate_type: str | None = None


@dataclass
class ReadMetadata:
    """The parts of the metadata tests, verify and the report read back.

    ``output_name``, ``label_file`` and ``label_file_type`` keep their classifier meaning (its
    one output); for a detector ``output_name`` lists the four names in file order and the label
    fields describe the file attached to "category"; for a segmenter they list both names and
    describe labels.txt (a model-level file, no background), while ``axis_labels`` has the file
    MediaPipe reads off the probabilities (background first). ``outputs`` has every output in
    full; ``segmenter_activation`` is SEGMENTER_METADATA's activation name, None without one.
    """

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
    kind: str = "classification"
    outputs: list[OutputMetadata] = field(default_factory=list)
    output_groups: dict[str, list[str]] = field(default_factory=dict)
    axis_labels: list[str] | None = None
    segmenter_activation: str | None = None


def _enum_name(enum_cls: Any, value: int) -> str:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_")}.get(value, str(value))


def _read_output(out: Any) -> OutputMetadata:
    fb = metadata_fb()
    content = "none"
    box_index = box_type = coord = None
    if out.content is not None:
        content = _enum_name(fb.ContentProperties, out.content.contentPropertiesType)
        if out.content.contentPropertiesType == fb.ContentProperties.BoundingBoxProperties:
            props = out.content.contentProperties
            box_index = [int(v) for v in props.index] if props.index is not None else None
            box_type = _enum_name(fb.BoundingBoxType, props.type)
            coord = _enum_name(fb.CoordinateType, props.coordinateType)
    label_file = label_type = None
    for af in out.associatedFiles or []:
        label_file = _str(af.name)
        label_type = _enum_name(fb.AssociatedFileType, af.type)
    return OutputMetadata(_str(out.name), content, label_file, label_type, box_index, box_type, coord)


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
    inp = sub.inputTensorMetadata[0]
    outputs = [_read_output(o) for o in sub.outputTensorMetadata or []]
    if not outputs:
        raise ExportError(f"{METADATA_NAME} describes no output tensor")
    detection = len(outputs) == 4 and {o.name for o in outputs} == set(DETECTION_TENSOR_NAMES.values())
    segmentation = len(outputs) == 2 and {o.name for o in outputs} == {SEGMENTATION_PROBABILITIES, SEGMENTATION_MASK}
    color = None
    if inp.content is not None and inp.content.contentPropertiesType == fb.ContentProperties.ImageProperties:
        color = _enum_name(fb.ColorSpaceType, inp.content.contentProperties.colorSpace)
    normalization = None
    for unit in inp.processUnits or []:
        if unit.optionsType == fb.ProcessUnitOptions.NormalizationOptions:
            normalization = {"mean": [float(v) for v in unit.options.mean], "std": [float(v) for v in unit.options.std]}
    zipped = _zipped_files(tflite_bytes)
    axis_labels = activation = None
    if segmentation:
        model_files = meta.associatedFiles or []
        label_file = _str(model_files[0].name) if model_files else None
        label_type = _enum_name(fb.AssociatedFileType, model_files[0].type) if model_files else None
        axis_file = next(o for o in outputs if o.name == SEGMENTATION_PROBABILITIES).label_file
        if axis_file and axis_file in zipped:
            axis_labels = zipped[axis_file].decode().splitlines()
    else:
        labelled = next((o for o in outputs if o.label_file), None) if detection else outputs[0]
        label_file = labelled.label_file if labelled else None
        label_type = labelled.label_file_type if labelled else None
    labels = None
    if label_file and label_file in zipped:
        labels = zipped[label_file].decode().splitlines()
    contract = None
    for custom in sub.customMetadata or []:
        if _str(custom.name) == CONTRACT_METADATA_NAME:
            contract = json.loads(bytes(bytearray(custom.data)).decode())
        elif _str(custom.name) == SEGMENTER_METADATA_NAME:
            sfb_seg = segmenter_fb()
            opts = sfb_seg.ImageSegmenterOptions.GetRootAs(bytes(bytearray(custom.data)), 0)
            activation = _enum_name(sfb_seg.Activation, opts.Activation())
    groups = {_str(g.name): [_str(n) for n in g.tensorNames or []] for g in sub.outputTensorGroups or []}
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
        output_name=", ".join(o.name for o in outputs) if detection or segmentation else outputs[0].name,
        label_file=label_file,
        label_file_type=label_type,
        labels=labels,
        contract=contract,
        kind="detection" if detection else "segmentation" if segmentation else "classification",
        outputs=outputs,
        output_groups=groups,
        axis_labels=axis_labels,
        segmenter_activation=activation,
    )


def _zipped_files(data: bytes) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return {n: zf.read(n) for n in zf.namelist()}
    except zipfile.BadZipFile:
        return {}
