"""Detection TFLite metadata and the MediaPipe Tasks ObjectDetector client check.

The real detector may not be trained or even buildable when this runs, so a tiny stand-in graph
plays its part: a 64x64 uint8 image -> per-cell colour means as raw anchor outputs -> the
project's post-processing (``tfcnn.tasks.postprocess.detect``, or a builtin-op fallback when
that module is absent) -> the four SSD-style outputs. It is converted from a SavedModel's
``serving_default`` signature, as the export does, so its flatbuffer output order is the
converter's own (not the dict's): exactly what the metadata writer must follow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("mediapipe")

SIZE, GRID, MAX_DETECTIONS = 64, 4, 5
LABELS = ["red", "green", "blue"]
SCORE_THRESHOLD = 0.9  # high enough that images differ in how many rows are real


def _anchors() -> np.ndarray:
    """One anchor per cell of a GRID x GRID grid, (ymin, xmin, ymax, xmax) normalised."""
    return np.array(
        [[i / GRID, j / GRID, (i + 1) / GRID, (j + 1) / GRID] for i in range(GRID) for j in range(GRID)], np.float32
    )


def _standin_function():
    """The stand-in detector as a tf.function: raw [1, A, 4 + 3] from cell means, then NMS."""
    import tensorflow as tf

    anchors = _anchors()
    from tfcnn.tasks.postprocess import detect

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.uint8, name="image")])
    def fn(image):
        x = tf.cast(image, tf.float32) / 255.0
        cells = tf.reshape(tf.nn.avg_pool2d(x, SIZE // GRID, SIZE // GRID, "VALID"), [1, GRID * GRID, 3])
        deltas = tf.concat([cells[..., :2] - 0.5, cells[..., 1:3] - 0.5], -1)  # boxes move with the colours
        logits = (cells - 0.45) * 12.0  # class k scores high where channel k is bright
        raw = tf.concat([deltas, logits], -1)
        return detect(
            raw, anchors, score_threshold=SCORE_THRESHOLD, nms_iou=0.5, pre_nms_top_k=20, max_detections=MAX_DETECTIONS
        )

    return fn


def _images() -> np.ndarray:
    """Real photographs at the model size, mirrored copies, and a black frame (no detection)."""
    import tensorflow as tf
    from sklearn.datasets import load_sample_image

    imgs = []
    for name in ("china.jpg", "flower.jpg"):
        im = tf.image.resize(load_sample_image(name), [SIZE, SIZE], antialias=True).numpy()
        imgs.append(np.clip(np.round(im), 0, 255).astype(np.uint8))
    imgs += [imgs[0][::-1].copy(), imgs[1][:, ::-1].copy(), np.zeros_like(imgs[0])]
    return np.stack(imgs)


def _spec(order: tuple[str, ...]):
    from tfcnn.export.tflite_metadata import MetadataSpec

    return MetadataSpec(
        name="stand-in detector (tflite_float32)",
        version="1",
        description="a test graph",
        author="tfcnn",
        license="Apache-2.0",
        height=SIZE,
        width=SIZE,
        input_description="uint8 RGB",
        output_description="four detection tensors",
        contract={"input": {"dtype": "uint8"}, "output": {"kind": "detection", "max_detections": MAX_DETECTIONS}},
        kind="detection",
        output_order=order,
    )


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Any]:
    """The stand-in converted once; files with and without the packed labels."""
    import tensorflow as tf

    from tfcnn.export.tflite_metadata import build_metadata, output_tensor_order, populate

    root = tmp_path_factory.mktemp("mp_det")
    fn = _standin_function()
    module = tf.Module()
    module.fn = fn
    tf.saved_model.save(module, str(root / "sm"), signatures={"serving_default": fn.get_concrete_function()})
    raw = tf.lite.TFLiteConverter.from_saved_model(str(root / "sm")).convert()
    order = tuple(output_tensor_order(raw))
    meta = build_metadata(_spec(order))
    labelled = root / "model.tflite"
    labelled.write_bytes(populate(raw, meta, {"labels.txt": ("\n".join(LABELS) + "\n").encode()}))
    unpacked = root / "model_no_labels.tflite"
    unpacked.write_bytes(populate(raw, meta, {}))
    return {"raw": raw, "order": order, "path": labelled, "unpacked": unpacked}


@pytest.fixture(scope="module")
def litert(converted) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from tfcnn.export.tflite import LiteRTSignatureRunner

    images = _images()
    return images, LiteRTSignatureRunner(converted["path"]).predict(images)


def test_metadata_follows_the_flatbuffer_output_order(converted):
    from tfcnn.export.tflite import interpreter
    from tfcnn.export.tflite_metadata import DETECTION_TENSOR_NAMES, read_metadata

    order = converted["order"]
    assert sorted(order) == sorted(DETECTION_TENSOR_NAMES)
    it = interpreter(converted["path"])
    by_name = it.get_signature_runner("serving_default").get_output_details()
    # Position i of the metadata describes the interpreter's i-th output tensor.
    assert [d["index"] for d in it.get_output_details()] == [by_name[k]["index"] for k in order]
    md = read_metadata(converted["path"].read_bytes())
    assert [o.name for o in md.outputs] == [DETECTION_TENSOR_NAMES[k] for k in order]


def test_read_metadata_reports_the_detection_outputs(converted):
    from tfcnn.export.tflite_metadata import read_metadata

    md = read_metadata(converted["path"].read_bytes())
    assert md.kind == "detection" and md.labels == LABELS
    assert md.label_file == "labels.txt" and md.label_file_type == "TENSOR_VALUE_LABELS"
    assert md.input_name == "image" and md.color_space == "RGB"
    assert md.normalization == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    out = {o.name: o for o in md.outputs}
    loc = out["location"]
    assert loc.content == "BoundingBoxProperties" and loc.box_index == [1, 0, 3, 2]
    assert loc.box_type == "BOUNDARIES" and loc.coordinate_type == "RATIO"
    assert out["category"].label_file_type == "TENSOR_VALUE_LABELS"
    assert out["score"].label_file is None and out["number of detections"].label_file is None
    assert md.output_groups == {"detection_result": ["location", "category", "score"]}
    assert md.output_name == ", ".join(o.name for o in md.outputs)
    assert md.contract["output"]["kind"] == "detection" and md.min_parser_version == "1.5.0"
    assert read_metadata(converted["unpacked"].read_bytes()).labels is None


def test_classifier_metadata_layout_is_unchanged():
    from tfcnn.errors import ExportError
    from tfcnn.export.tflite_metadata import MetadataSpec, build_metadata, metadata_fb

    fb = metadata_fb()
    spec = MetadataSpec("c", "1", "d", "a", "MIT", 32, 32, "in", "out", contract={"output": {"kind": "probabilities"}})
    meta = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAs(build_metadata(spec), 0))
    sub = meta.subgraphMetadata[0]
    assert sub.name == b"image_classifier" and not sub.outputTensorGroups
    (out,) = sub.outputTensorMetadata
    assert out.name == b"probabilities" and out.associatedFiles[0].type == fb.AssociatedFileType.TENSOR_AXIS_LABELS
    with pytest.raises(ExportError, match="output order"):
        build_metadata(_spec(("boxes", "classes", "scores")))


def test_mediapipe_object_detector_agrees_with_litert(converted, litert):
    from tfcnn.export.formats.tflite import mediapipe_check, mediapipe_detector_check

    images, out = litert
    counts = out["num_detections"].astype(int)
    # The images exercise a full, a partly padded and an empty result.
    assert counts.max() == MAX_DETECTIONS and 0 in counts and any(0 < c < MAX_DETECTIONS for c in counts)
    result = mediapipe_detector_check(converted["path"], images, out, LABELS)
    assert result is not None and result["passed"], result
    assert result["detection_agreement_with_litert"] == 1.0 and result["images_agreeing"] == 1.0
    assert result["labels_from_metadata"] is True and result["checked"] == len(images)
    # Each check declines the other task's outputs, so verify can run every check of a format.
    assert mediapipe_check(converted["path"], images, out, LABELS) is None
    assert mediapipe_detector_check(converted["path"], images, np.zeros((len(images), 3)), LABELS) is None


def test_mediapipe_check_fails_without_packed_labels_or_with_other_labels(converted, litert):
    from tfcnn.export.formats.tflite import mediapipe_detector_check

    images, out = litert
    missing = mediapipe_detector_check(converted["unpacked"], images, out, LABELS)
    assert missing is not None and missing["passed"] is False and missing["labels_from_metadata"] is False
    assert "labels.txt" in missing["failures"][0]
    wrong = mediapipe_detector_check(converted["path"], images, out, ["a", "b", "c"])
    assert wrong is not None and not wrong["passed"] and wrong["labels_from_metadata"] is False
    assert wrong["mismatches"] and wrong["detection_agreement_with_litert"] < 1.0


def test_both_client_checks_are_registered_for_float32_and_int8():
    from tfcnn.export.formats import FORMATS, client_of
    from tfcnn.export.formats.tflite import mediapipe_check, mediapipe_detector_check

    def mediapipe(variant):  # the variant's MediaPipe checks (every variant also has OpenVINO's)
        return [c for c in FORMATS[variant].client_checks if client_of(c) == "mediapipe"]

    for variant, floor in (("tflite_float32", 0.0), ("tflite_int8", 0.3)):
        classifier, detector = mediapipe(variant)
        assert classifier is mediapipe_check
        assert detector.func is mediapipe_detector_check and detector.keywords == {"score_floor": floor}
    assert mediapipe("tflite_float16") == []


def test_full_integer_variant_is_read_by_mediapipe_too(converted, tmp_path):
    """The int8 file (uint8 in, int8 body, float post-processing tail) the export builds for a
    detector: its quantized scores tie, and MediaPipe's runtime may keep other tied candidates."""
    import tensorflow as tf

    from tfcnn.export import tflite as tflite_mod
    from tfcnn.export.formats.tflite import mediapipe_detector_check
    from tfcnn.export.tflite_metadata import build_metadata, output_tensor_order, populate

    inner = _standin_function()

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, name="image")])
    def float_input(image):  # the export converts full-integer int8 from a float32-input archive
        return inner(tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8))

    module = tf.Module()
    module.fn = float_input
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": float_input.get_concrete_function()})
    images = _images()
    representative = images.astype(np.float32)
    representative[0, 0, 0, :], representative[0, -1, -1, :] = 0.0, 255.0  # pins the uint8 input to scale 1
    from tfcnn.tasks.postprocess import SCOPE

    raw = tflite_mod.convert("tflite_int8", tmp_path / "sm", representative, (f"{SCOPE}/",))
    path = tmp_path / "model_int8.tflite"
    meta = build_metadata(_spec(tuple(output_tensor_order(raw))))
    path.write_bytes(populate(raw, meta, {"labels.txt": "\n".join(LABELS).encode()}))
    out = tflite_mod.LiteRTSignatureRunner(path).predict(images)
    assert out["classes"].dtype == np.float32 and np.array_equal(out["classes"], np.round(out["classes"]))  # float tail
    result = mediapipe_detector_check(path, images, out, LABELS, score_floor=0.3)
    assert result is not None and result["passed"] and result["labels_from_metadata"] is True, result
    assert result["detection_agreement_with_litert"] > 0


def _bb(x: int, y: int, w: int, h: int) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(origin_x=x, origin_y=y, width=w, height=h)


def test_only_tied_scores_may_be_reordered():
    from tfcnn.export.formats.tflite import _match_detections

    boxes = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0]], np.float32)
    classes = np.array([0.0, 1.0, 2.0], np.float32)
    a, b, c = _bb(0, 0, 32, 32), _bb(32, 32, 32, 32), _bb(32, 0, 32, 32)
    same = [(a, None, "red", 0.9), (b, None, "green", 0.8), (c, None, "blue", 0.7)]
    assert _match_detections(same, boxes, classes, np.array([0.9, 0.8, 0.7]), 3, LABELS, 64, 64) == (3, 0, [])
    # Three rows at one score: MediaPipe kept other candidates for two of them -> a tie reordering.
    tied = [(a, None, "red", 0.5), (_bb(0, 32, 32, 32), None, "red", 0.5), (_bb(8, 8, 8, 8), None, "blue", 0.5)]
    assert _match_detections(tied, boxes, classes, np.full(3, 0.5), 3, LABELS, 64, 64) == (1, 2, [])
    # A unique score on a different box is a real disagreement, not a tie.
    moved = [(a, None, "red", 0.9), (_bb(0, 0, 8, 8), None, "green", 0.8), (c, None, "blue", 0.7)]
    exact, reordered, problems = _match_detections(moved, boxes, classes, np.array([0.9, 0.8, 0.7]), 3, LABELS, 64, 64)
    assert (exact, reordered) == (2, 0) and problems
    # A count that differs is reported even when every returned row matches.
    assert _match_detections(same[:2], boxes, classes, np.array([0.9, 0.8, 0.7]), 3, LABELS, 64, 64)[2]
