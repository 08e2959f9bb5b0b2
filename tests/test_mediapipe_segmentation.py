"""Segmentation TFLite metadata and the MediaPipe Tasks ImageSegmenter client check.

A tiny stand-in plays the segmenter: a 32x32 uint8 image -> per-pixel logits from its colours
(background where the pixel is dark) -> softmax and argmax under the task's
``segmentation_postprocess`` name scope -> ``class_probabilities [1, H, W, K + 1]`` and
``mask [1, H, W]``, converted from a SavedModel's ``serving_default`` signature as the export
does. The converter puts class_probabilities *first*; MediaPipe's ImageSegmenter reads the
*last* output as its confidences, which is why the export moves it (``move_output_last``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mediapipe")

SIZE = 32
LABELS = ["red", "green", "blue"]


def _standin_function(dtype: Any = None):
    import tensorflow as tf

    dtype = dtype or tf.uint8
    weights = tf.constant(np.array([[2, -1, -1], [-1, 2, -1], [-1, -1, 2]], np.float32) * 6.0)

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], dtype, name="image")])
    def fn(image):
        x = tf.clip_by_value(tf.round(tf.cast(image, tf.float32)), 0.0, 255.0) / 255.0
        x = tf.nn.avg_pool2d(x, 3, 1, "SAME")
        fg = tf.einsum("nhwc,ck->nhwk", x, weights)  # class k where channel k dominates
        bg = 3.0 - 4.0 * tf.reduce_max(x, -1, keepdims=True)  # background where the pixel is dark
        logits = tf.concat([bg, fg], -1)
        with tf.name_scope("segmentation_postprocess"):
            probs = tf.nn.softmax(logits, axis=-1)
            return {"class_probabilities": probs, "mask": tf.argmax(probs, axis=-1, output_type=tf.int32)}

    return fn


def _save(fn, path: Path) -> Path:
    import tensorflow as tf

    module = tf.Module()
    module.fn = fn
    tf.saved_model.save(module, str(path), signatures={"serving_default": fn.get_concrete_function()})
    return path


def _images() -> np.ndarray:
    """Two photographs at the model size, a mirrored copy and a black frame (all background)."""
    import tensorflow as tf
    from sklearn.datasets import load_sample_image

    imgs = []
    for name in ("china.jpg", "flower.jpg"):
        im = tf.image.resize(load_sample_image(name), [SIZE, SIZE], antialias=True).numpy()
        imgs.append(np.clip(np.round(im), 0, 255).astype(np.uint8))
    imgs += [imgs[1][:, ::-1].copy(), np.zeros_like(imgs[0])]
    return np.stack(imgs)


def _spec(order: tuple[str, ...]):
    from tfcnn.export.tflite_metadata import MetadataSpec

    return MetadataSpec(
        name="stand-in segmenter (tflite_float32)",
        version="1",
        description="a test graph",
        author="tfcnn",
        license="Apache-2.0",
        height=SIZE,
        width=SIZE,
        input_description="uint8 RGB",
        output_description="per-pixel softmax, background first",
        contract={"input": {"dtype": "uint8"}, "output": {"kind": "segmentation"}},
        kind="segmentation",
        output_order=order,
    )


def _files(labels: list[str] = LABELS) -> dict[str, bytes]:
    from tfcnn.export.tflite_metadata import SEGMENTATION_LABELS_FILE, segmentation_label_lines

    return {
        "labels.txt": ("\n".join(labels) + "\n").encode(),
        SEGMENTATION_LABELS_FILE: ("\n".join(segmentation_label_lines(labels)) + "\n").encode(),
    }


def _package(raw: bytes, path: Path) -> Path:
    """What the export's build does: probabilities last, metadata in file order, both label files."""
    from tfcnn.export.tflite_metadata import build_metadata, move_output_last, output_tensor_order, populate

    raw = move_output_last(raw, "class_probabilities")
    path.write_bytes(populate(raw, build_metadata(_spec(tuple(output_tensor_order(raw)))), _files()))
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Any]:
    import tensorflow as tf

    root = tmp_path_factory.mktemp("mp_seg")
    raw = tf.lite.TFLiteConverter.from_saved_model(str(_save(_standin_function(), root / "sm"))).convert()
    return {"raw": raw, "path": _package(raw, root / "model.tflite"), "root": root}


@pytest.fixture(scope="module")
def litert(converted) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from tfcnn.export.tflite import LiteRTSignatureRunner

    images = _images()
    return images, LiteRTSignatureRunner(converted["path"]).predict(images)


def test_probabilities_become_the_last_output_and_metadata_follows(converted, litert):
    from tfcnn.export.tflite import LiteRTSignatureRunner, interpreter
    from tfcnn.export.tflite_metadata import move_output_last, output_tensor_order, read_metadata

    raw = converted["raw"]
    assert output_tensor_order(raw)[0] == "class_probabilities"  # the converter's order, which MediaPipe misreads
    data = converted["path"].read_bytes()
    assert output_tensor_order(data) == ["mask", "class_probabilities"]
    assert move_output_last(data, "class_probabilities") == data  # already last: untouched
    it = interpreter(converted["path"])
    by_name = it.get_signature_runner("serving_default").get_output_details()
    assert it.get_output_details()[-1]["index"] == by_name["class_probabilities"]["index"]
    md = read_metadata(data)
    assert [o.name for o in md.outputs] == ["mask", "class_probabilities"]
    # The signature still maps names to the same tensors: the reordered file computes the same.
    images, out = litert
    (converted["root"] / "raw.tflite").write_bytes(raw)
    before = LiteRTSignatureRunner(converted["root"] / "raw.tflite").predict(images[:2])
    assert np.array_equal(before["class_probabilities"], out["class_probabilities"][:2])
    assert np.array_equal(before["mask"], out["mask"][:2])


def test_read_metadata_reports_the_segmentation_layout(converted):
    from tfcnn.export.tflite_metadata import read_metadata

    md = read_metadata(converted["path"].read_bytes())
    assert md.kind == "segmentation" and md.labels == LABELS  # labels.txt as the contract has it
    assert md.label_file == "labels.txt" and md.label_file_type == "DESCRIPTIONS"
    assert md.axis_labels == ["background", *LABELS]
    assert md.segmenter_activation == "NONE"  # the model applies softmax itself
    out = {o.name: o for o in md.outputs}
    probs = out["class_probabilities"]
    assert probs.label_file == "segmentation_labels.txt" and probs.label_file_type == "TENSOR_AXIS_LABELS"
    assert probs.content == "ImageProperties" and out["mask"].label_file is None
    assert md.output_name == "mask, class_probabilities"
    assert md.input_name == "image" and md.normalization == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    assert md.contract["output"]["kind"] == "segmentation" and md.min_parser_version == "1.5.0"


def test_metadata_refuses_probabilities_that_are_not_last():
    from tfcnn.errors import ExportError
    from tfcnn.export.tflite_metadata import build_metadata

    with pytest.raises(ExportError, match="ending with class_probabilities"):
        build_metadata(_spec(("class_probabilities", "mask")))
    with pytest.raises(ExportError, match="ending with class_probabilities"):
        build_metadata(_spec(("mask",)))


def test_mediapipe_image_segmenter_agrees_with_litert(converted, litert):
    from tfcnn.export.formats.tflite import mediapipe_check, mediapipe_detector_check, mediapipe_segmenter_check

    images, out = litert
    assert len(np.unique(out["mask"])) == len(LABELS) + 1  # every class, background included, appears
    result = mediapipe_segmenter_check(converted["path"], images, out, LABELS)
    assert result is not None and result["passed"], result
    assert result["pixel_agreement_with_litert"] >= 0.999 and result["max_confidence_diff"] <= 1e-5
    assert result["confidence_masks"] == len(LABELS) + 1 and result["labels_from_metadata"] is True
    assert result["checked"] == len(images) and result["confidence_tolerance"] == pytest.approx(1e-5)
    # The format's registered checks: the classifier one hands a segmenter's outputs on, the
    # detector one declines them; the segmenter check declines other tasks' outputs.
    assert mediapipe_check(converted["path"], images, out, LABELS)["client"].endswith("ImageSegmenter")
    assert mediapipe_detector_check(converted["path"], images, out, LABELS) is None
    assert mediapipe_segmenter_check(converted["path"], images, np.zeros((len(images), 4)), LABELS) is None
    assert mediapipe_segmenter_check(converted["path"], images, {"boxes": np.zeros((1, 1, 4))}, LABELS) is None


def test_converter_order_or_other_labels_fail(converted, litert, tmp_path):
    """Without the reorder MediaPipe reads the int32 mask [1, 32, 32] as 32 confidence maps (no
    error of its own): the check must say so, never pass."""
    from tfcnn.export.formats.tflite import mediapipe_segmenter_check
    from tfcnn.export.tflite_metadata import populate, read_metadata

    images, out = litert
    data = converted["path"].read_bytes()
    meta_buf = _metadata_buffer(data)
    unordered = tmp_path / "converter_order.tflite"
    unordered.write_bytes(populate(converted["raw"], meta_buf, _files()))  # metadata says probs last, file does not
    result = mediapipe_segmenter_check(unordered, images, out, LABELS)
    assert result is not None and result["passed"] is False
    assert "last output tensor is 'mask'" in result["failures"][0]
    assert any("32 confidence masks" in f for f in result["failures"]), result["failures"]
    assert read_metadata(unordered.read_bytes()).kind == "segmentation"

    wrong = mediapipe_segmenter_check(converted["path"], images, out, ["a", "b", "c"])
    assert wrong is not None and wrong["passed"] is False and wrong["labels_from_metadata"] is False
    assert "background + labels.txt" in wrong["failures"][-1]


def _metadata_buffer(data: bytes) -> bytes:
    from tfcnn.export.tflite_metadata import METADATA_NAME, model_fb

    model = model_fb().Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name() == METADATA_NAME.encode():
            return model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes()
    raise AssertionError("no metadata")


@pytest.fixture(scope="module")
def float_input_savedmodel(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The float32-input archive the export converts full-integer int8 from, and its calibration set."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("mp_seg_int8")
    images = _images()
    representative = images.astype(np.float32)
    representative[0, 0, 0, :], representative[0, -1, -1, :] = 0.0, 255.0  # pins the uint8 input to scale 1
    return _save(_standin_function(tf.float32), root / "sm"), representative


def test_full_integer_file_with_quantized_probabilities_fails_with_mediapipe_reason(float_input_savedmodel, tmp_path):
    """A fully quantized file (int8_float_names None, what a classifier's int8 export is): uint8
    probabilities next to the int32 mask. MediaPipe then dequantizes every output and refuses the
    int32 one, so the check reports that error instead of passing (hence the segmentation task
    keeps its outputs float32)."""
    from tfcnn.export import tflite as tflite_mod
    from tfcnn.export.formats.tflite import mediapipe_segmenter_check

    sm, representative = float_input_savedmodel
    raw = tflite_mod.convert("tflite_int8", sm, representative, None)
    path = _package(raw, tmp_path / "model_int8.tflite")
    images = _images()
    out = tflite_mod.LiteRTSignatureRunner(path).predict(images)
    details = tflite_mod.tensor_details(path)["outputs"]
    assert [d["dtype"] for d in details] == ["int32", "uint8"]
    result = mediapipe_segmenter_check(path, images, out, LABELS)
    assert result is not None and result["passed"] is False, result
    assert result["confidence_tolerance"] == pytest.approx(1e-5 + details[1]["quantization"]["scale"])
    assert "Unsupported input tensor type: Int32" in " ".join(result["failures"]), result["failures"]


def test_full_integer_file_with_float_probabilities_is_read_by_mediapipe(float_input_savedmodel, tmp_path):
    """What the export builds for a segmenter (Segmentation.int8_float_names = ()): the outputs
    float32 (int8 body, uint8 input), as a detector's int8 file does; softmax and argmax are fused
    into the output tensors, which is what is kept float."""
    from tfcnn.export import tflite as tflite_mod
    from tfcnn.export.formats.tflite import mediapipe_segmenter_check

    sm, representative = float_input_savedmodel
    from tfcnn.tasks import get_task

    raw = tflite_mod.convert("tflite_int8", sm, representative, get_task("segmentation").int8_float_names)
    path = _package(raw, tmp_path / "model_int8_float_tail.tflite")
    images = _images()
    out = tflite_mod.LiteRTSignatureRunner(path).predict(images)
    assert [d["dtype"] for d in tflite_mod.tensor_details(path)["outputs"]] == ["int32", "float32"]
    result = mediapipe_segmenter_check(path, images, out, LABELS)
    assert result is not None and result["passed"], result
    assert result["pixel_agreement_with_litert"] >= 0.999 and result["labels_from_metadata"] is True
