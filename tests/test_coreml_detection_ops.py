"""The numpy MIL evaluator's detection post-processing ops (topk, gather, slice_by_index, split,
stack, select, logical_and, range_1d, non_maximum_suppression) against coremltools' op
definitions, TF's NonMaxSuppressionV5, and the whole converted ``postprocess.detect`` graph.

Per op: small MIL Builder programs (no optimisation passes, so each op is evaluated as built)
checked against hand-worked results and, where the MIL op has one, its ``value_inference``.
End to end: a tiny image -> raw [1, A, 4 + K] -> ``detect`` SavedModel converted the way the
export converts it (``tfcnn.export.coreml.convert``) and run through ``CoreMLEvaluator`` (what
the verify runner uses), compared with TF on random images, in float32 and float16.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from tfcnn.errors import ExportError

RNG = np.random.default_rng(7)


def _ct():
    from tfcnn.export.coreml import _ct

    return _ct()


def _package(prog, path: Path) -> Path:
    ct = _ct()
    with contextlib.redirect_stderr(io.StringIO()):
        model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=prog.functions["main"].opset_version,
                           skip_model_load=True, compute_precision=ct.precision.FLOAT32, pass_pipeline=ct.PassPipeline.EMPTY)
    model.save(str(path))
    return path


def _run(pkg: Path, **feeds):
    from tfcnn.export.formats.coreml_eval import MILProgram

    return MILProgram(pkg).run(feeds)


def _value_inference(op: str, **kw):
    """coremltools' own value for the op on constant inputs (None where it has none)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function

    with Function({}, opset_version=_ct().target.iOS15):
        out = getattr(mb, op)(**kw)
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [None if o.val is None else np.asarray(o.val) for o in outs]


# --------------------------------------------------------------------------- tensor ops

X = np.array([[3.0, 1.0, 3.0, 2.0, 3.0, 0.0], [0.5, -1.0, 4.0, 4.0, -2.0, 1.5]], np.float32)  # ties in row 0 and 1
T = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)


@pytest.fixture(scope="module")
def tensor_ops(tmp_path_factory):
    """One iOS15 float32 program with each tensor op variant as a named output."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    ct = _ct()

    @mb.program(input_specs=[mb.TensorSpec(shape=X.shape), mb.TensorSpec(shape=T.shape), mb.TensorSpec(shape=(1,), dtype=types.int32)],
                opset_version=ct.target.iOS15)
    def prog(x, t, n):
        outs = []
        v, i = mb.topk(x=x, k=3, name="top3")
        outs += [mb.identity(x=v, name="top3_v"), mb.identity(x=i, name="top3_i")]
        v, i = mb.topk(x=x, k=2, ascending=True, name="bot2")
        outs += [mb.identity(x=v, name="bot2_v"), mb.identity(x=i, name="bot2_i")]
        v, i = mb.topk(x=x, k=1, axis=0, name="top_ax0")
        outs += [mb.identity(x=v, name="top_ax0_v"), mb.identity(x=i, name="top_ax0_i")]
        outs.append(mb.gather(x=t, indices=np.array([2, -1, 0], np.int32), axis=1, name="gather_ax1"))
        outs.append(mb.gather(x=t, indices=np.array([[1, 0], [0, 1]], np.int32), axis=0, name="gather_2d"))
        outs.append(mb.gather(x=t, indices=np.int32(-2), axis=-1, name="gather_scalar"))
        outs.append(mb.slice_by_index(x=t, begin=[0, 1, 4], end=[2, 3, 0], stride=[1, 1, -2], name="slice_neg"))
        outs.append(mb.slice_by_index(x=t, begin=[1, 0, 1], end=[0, 0, 4], begin_mask=[False, True, False],
                                      end_mask=[True, True, False], squeeze_mask=[True, False, False], name="slice_sq"))
        outs.append(mb.slice_by_index(x=t, begin=[0, -1, 0], end=[0, 0, 0], begin_mask=[True, False, True],
                                      end_mask=[True, False, True], squeeze_mask=[False, True, False], name="slice_last"))
        outs.append(mb.slice_by_index(x=t, begin=[0, 0, -9], end=[2, 99, 3], stride=[2, 1, 1], name="slice_clip"))
        outs += list(mb.split(x=t, num_splits=5, axis=-1, name="split_n"))
        outs += list(mb.split(x=t, split_sizes=[1, 2], axis=1, name="split_s"))
        outs.append(mb.stack(values=[x, mb.mul(x=x, y=2.0), mb.mul(x=x, y=3.0)], axis=0, name="stack0"))
        outs.append(mb.stack(values=[x, mb.mul(x=x, y=2.0)], axis=-1, name="stack_last"))
        gt, lt = mb.greater(x=x, y=0.9), mb.less(x=x, y=3.5)
        both = mb.logical_and(x=gt, y=lt, name="and")
        outs.append(both)
        outs.append(mb.logical_and(x=gt, y=np.array([True, False, True, True, False, True]), name="and_bcast"))
        outs.append(mb.select(cond=both, a=x, b=np.float32(-7.0), name="select_scalar"))
        outs.append(mb.logical_or(x=gt, y=mb.logical_not(x=lt), name="or_not"))
        outs.append(mb.logical_xor(x=gt, y=lt, name="xor"))
        outs.append(mb.equal(x=x, y=3.0, name="eq"))
        outs.append(mb.not_equal(x=x, y=3.0, name="ne"))
        outs.append(mb.select(cond=np.array([[True], [False]]), a=x, b=mb.mul(x=x, y=10.0), name="select_bcast"))
        end = mb.squeeze(x=n, axes=[0])
        outs.append(mb.range_1d(start=np.int32(0), end=end, step=np.int32(1), name="range_dyn"))
        outs.append(mb.range_1d(start=np.int32(7), end=end, step=np.int32(-2), name="range_down"))
        outs.append(mb.range_1d(start=np.float32(0.5), end=np.float32(2.0), step=np.float32(0.5), name="range_f"))
        return tuple(outs)

    pkg = _package(prog, tmp_path_factory.mktemp("det_ops") / "tensor_ops.mlpackage")
    return pkg, _run(pkg, x=X, t=T, n=np.array([4], np.int32))


def test_topk_values_indices_and_ties(tensor_ops):
    """Descending / ascending / axis 0; ties go to the lower index first, as tf.math.top_k."""
    _, out = tensor_ops
    np.testing.assert_array_equal(out["top3_v"], [[3, 3, 3], [4, 4, 1.5]])
    np.testing.assert_array_equal(out["top3_i"], [[0, 2, 4], [2, 3, 5]])
    assert out["top3_i"].dtype == np.int32
    np.testing.assert_array_equal(out["bot2_v"], [[0, 1], [-2, -1]])
    np.testing.assert_array_equal(out["bot2_i"], [[5, 1], [4, 1]])
    np.testing.assert_array_equal(out["top_ax0_v"], [[3, 1, 4, 4, 3, 1.5]])
    np.testing.assert_array_equal(out["top_ax0_i"], [[0, 0, 1, 1, 0, 1]])
    import tensorflow as tf

    ref = tf.math.top_k(X, k=3)
    np.testing.assert_array_equal(out["top3_i"], ref.indices.numpy())
    # value_inference agrees where there are no ties (its argsort is not stable)
    vals, _ = _value_inference("topk", x=X[1:, [0, 1, 2, 4, 5]], k=3)
    np.testing.assert_array_equal(vals, [[4, 1.5, 0.5]])


def test_gather_slice_split_stack_match_numpy_and_value_inference(tensor_ops):
    _, out = tensor_ops
    refs = {
        "gather_ax1": T[:, [2, -1, 0]],
        "gather_2d": T[[[1, 0], [0, 1]]],
        "gather_scalar": T[..., -2],
        "slice_neg": T[0:2, 1:3, 4:0:-2],
        "slice_sq": T[1, :, 1:4],
        "slice_last": T[:, -1, :],
        "slice_clip": T[0:2:2, 0:99, -9:3],
        "stack0": np.stack([X, X * 2, X * 3], 0),
        "stack_last": np.stack([X, X * 2], -1),
    }
    for name, ref in refs.items():
        assert out[name].shape == ref.shape, name
        np.testing.assert_array_equal(out[name], ref, err_msg=name)
    n_parts = [v for k, v in out.items() if k.startswith("split_n")]
    s_parts = [v for k, v in out.items() if k.startswith("split_s")]
    assert [p.shape for p in n_parts] == [(2, 3, 1)] * 5 and [p.shape for p in s_parts] == [(2, 1, 5), (2, 2, 5)]
    np.testing.assert_array_equal(np.concatenate(n_parts, -1), T)
    np.testing.assert_array_equal(np.concatenate(s_parts, 1), T)
    # coremltools' own value_inference on the same constants
    vi = {
        "gather_ax1": _value_inference("gather", x=T, indices=np.array([2, -1, 0], np.int32), axis=1),
        "gather_2d": _value_inference("gather", x=T, indices=np.array([[1, 0], [0, 1]], np.int32), axis=0),
        "slice_neg": _value_inference("slice_by_index", x=T, begin=[0, 1, 4], end=[2, 3, 0], stride=[1, 1, -2]),
        "slice_sq": _value_inference("slice_by_index", x=T, begin=[1, 0, 1], end=[0, 0, 4], begin_mask=[False, True, False],
                                     end_mask=[True, True, False], squeeze_mask=[True, False, False]),
        "slice_clip": _value_inference("slice_by_index", x=T, begin=[0, 0, -9], end=[2, 99, 3], stride=[2, 1, 1]),
        "stack0": _value_inference("stack", values=[X, X * 2, X * 3], axis=0),
    }
    for name, (val,) in vi.items():
        np.testing.assert_array_equal(out[name], val, err_msg=name)
    for got, val in zip(s_parts, _value_inference("split", x=T, split_sizes=[1, 2], axis=1)):
        np.testing.assert_array_equal(got, val)


def test_logical_select_and_range(tensor_ops):
    _, out = tensor_ops
    both = (X > 0.9) & (X < 3.5)
    np.testing.assert_array_equal(out["and"], both)
    np.testing.assert_array_equal(out["and_bcast"], (X > 0.9) & np.array([True, False, True, True, False, True]))
    np.testing.assert_array_equal(out["select_scalar"], np.where(both, X, -7.0))
    np.testing.assert_array_equal(out["or_not"], (X > 0.9) | ~(X < 3.5))
    np.testing.assert_array_equal(out["xor"], (X > 0.9) ^ (X < 3.5))
    np.testing.assert_array_equal(out["eq"], X == 3.0)
    np.testing.assert_array_equal(out["ne"], X != 3.0)
    np.testing.assert_array_equal(out["select_bcast"], np.where([[True], [False]], X, X * 10))
    np.testing.assert_array_equal(out["range_dyn"], [0, 1, 2, 3])
    assert out["range_dyn"].dtype == np.int32
    np.testing.assert_array_equal(out["range_down"], [7, 5])
    np.testing.assert_array_equal(out["range_f"], [0.5, 1.0, 1.5])
    (vi,) = _value_inference("range_1d", start=np.int32(7), end=np.int32(4), step=np.int32(-2))
    np.testing.assert_array_equal(out["range_down"], vi)


def test_bad_gather_index_and_unbroadcastable_select_fail(tmp_path):
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    ct = _ct()

    @mb.program(input_specs=[mb.TensorSpec(shape=(5,)), mb.TensorSpec(shape=(2,), dtype=types.int32)], opset_version=ct.target.iOS15)
    def prog(x, i):
        return mb.gather(x=x, indices=i, axis=0, name="g")

    pkg = _package(prog, tmp_path / "g.mlpackage")
    np.testing.assert_array_equal(_run(pkg, x=np.arange(5, dtype=np.float32), i=np.array([-5, 4], np.int32))["g"], [0, 4])
    with pytest.raises(ExportError, match=r"gather.*indices \[5\] are outside \[-5, 5\)"):
        _run(pkg, x=np.arange(5, dtype=np.float32), i=np.array([0, 5], np.int32))

    @mb.program(input_specs=[mb.TensorSpec(shape=(4,)), mb.TensorSpec(shape=(1,), dtype=types.int32)], opset_version=ct.target.iOS15)
    def prog2(x, n):
        r = mb.range_1d(start=np.int32(0), end=mb.squeeze(x=n, axes=[0]), step=np.int32(1))
        part = mb.gather(x=x, indices=r, axis=0)
        return mb.select(cond=mb.less(x=np.arange(4, dtype=np.int32), y=mb.squeeze(x=n, axes=[0])), a=part, b=np.float32(0), name="s")

    pkg2 = _package(prog2, tmp_path / "s.mlpackage")
    x = np.array([1, 2, 3, 4], np.float32)
    np.testing.assert_array_equal(_run(pkg2, x=x, n=np.array([4], np.int32))["s"], x)
    np.testing.assert_array_equal(_run(pkg2, x=x, n=np.array([1], np.int32))["s"], [1, 0, 0, 0])  # a [1] broadcasts
    with pytest.raises(ExportError, match=r"select.*do not broadcast"):
        _run(pkg2, x=x, n=np.array([3], np.int32))


def test_gather_batch_dims_ios16(tmp_path):
    from coremltools.converters.mil import Builder as mb

    ct = _ct()
    idx = np.array([[2, 0], [1, 1]], np.int32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3, 4))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.gather(x=x, indices=idx, axis=1, batch_dims=1, name="g")

    t = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    got = _run(_package(prog, tmp_path / "bd.mlpackage"), x=t)["g"]
    np.testing.assert_array_equal(got, np.stack([t[0][[2, 0]], t[1][[1, 1]]]))
    import tensorflow as tf

    np.testing.assert_array_equal(got, tf.gather(t, idx, axis=1, batch_dims=1).numpy())


# --------------------------------------------------------------------------- non_maximum_suppression


def _corners_to_center(b: np.ndarray) -> np.ndarray:
    """TF (y1, x1, y2, x2) -> MIL (x_center, y_center, width, height), as the TF frontend does."""
    y1, x1, y2, x2 = (b[..., i] for i in range(4))
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, np.abs(x2 - x1), np.abs(y2 - y1)], -1).astype(np.float32)


def _nms_package(tmp_path: Path, n: int, b: int, k: int, iou: float, score: float, max_boxes: int, per_class: bool) -> Path:
    from coremltools.converters.mil import Builder as mb

    ct = _ct()

    @mb.program(input_specs=[mb.TensorSpec(shape=(n, b, 4)), mb.TensorSpec(shape=(n, b, k))], opset_version=ct.target.iOS15)
    def prog(boxes, scores):
        return mb.non_maximum_suppression(boxes=boxes, scores=scores, iou_threshold=np.float32(iou), score_threshold=np.float32(score),
                                          max_boxes=max_boxes, per_class_suppression=per_class, name="nms")

    return _package(prog, tmp_path / f"nms_{n}_{b}_{k}_{int(per_class)}_{max_boxes}.mlpackage")


def _nms(pkg: Path, boxes: np.ndarray, scores: np.ndarray):
    out = _run(pkg, boxes=boxes.astype(np.float32), scores=scores.astype(np.float32))
    return [out[k] for k in sorted(out)]  # nms_0 boxes, nms_1 scores, nms_2 indices, nms_3 count


def test_nms_hand_made_padding_and_classes(tmp_path):
    """Five boxes: 0/1 overlap (IoU 0.9), 2 is apart, 3 overlaps 2 a little (IoU 1/7), 4 is below
    the score threshold. Padding is 0 / 0 / -1; per-class keeps an overlapping box of another class."""
    corners = np.array([[0, 0, 1, 1], [0, 0.1, 1, 1.0], [2, 2, 3, 3], [2.5, 2.5, 3.5, 3.5], [5, 5, 6, 6]], np.float32)
    boxes = _corners_to_center(corners)[None]
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.0], [0.1, 0.6], [0.05, 0.01]], np.float32)[None]
    pkg = _nms_package(tmp_path, 1, 5, 2, iou=0.5, score=0.3, max_boxes=6, per_class=False)
    cb, cs, ci, cnt = _nms(pkg, boxes, scores)
    np.testing.assert_array_equal(ci, [[0, 2, 3, -1, -1, -1]])  # 1 suppressed by 0, 4 below threshold
    np.testing.assert_array_equal(cnt, [3])
    np.testing.assert_allclose(cb[0, :3], boxes[0, [0, 2, 3]])
    np.testing.assert_array_equal(cb[0, 3:], 0)
    np.testing.assert_allclose(cs[0, :3], scores[0, [0, 2, 3]])
    np.testing.assert_array_equal(cs[0, 3:], 0)
    assert ci.dtype == np.int32 and cnt.dtype == np.int32
    pkg = _nms_package(tmp_path, 1, 5, 2, iou=0.5, score=0.3, max_boxes=6, per_class=True)
    _, _, ci, cnt = _nms(pkg, boxes, scores)
    np.testing.assert_array_equal(ci, [[0, 1, 2, 3, -1, -1]])  # 1 is class 1, 0 class 0: not suppressed
    pkg = _nms_package(tmp_path, 1, 5, 2, iou=0.1, score=0.3, max_boxes=2, per_class=False)
    _, _, ci, cnt = _nms(pkg, boxes, scores)
    np.testing.assert_array_equal(ci, [[0, 2]])  # max_boxes cuts; 3 would be suppressed by 2 at iou 0.1 anyway
    np.testing.assert_array_equal(cnt, [2])


def test_nms_never_returns_empty(tmp_path):
    """No box reaches the score threshold: CoreML's NMS reports 1 box, the highest scoring
    (NeuralNetwork.proto's NMS layer contract); TF's NonMaxSuppressionV5 reports 0."""
    boxes = _corners_to_center(RNG.uniform(0, 1, size=(1, 4, 4)).astype(np.float32))
    scores = np.array([[[0.1], [0.3], [0.2], [0.3]]], np.float32)
    pkg = _nms_package(tmp_path, 1, 4, 1, iou=0.5, score=0.5, max_boxes=3, per_class=False)
    cb, cs, ci, cnt = _nms(pkg, boxes, scores)
    np.testing.assert_array_equal(cnt, [1])
    np.testing.assert_array_equal(ci, [[1, -1, -1]])  # tie 0.3 / 0.3: the lower index
    np.testing.assert_allclose(cs[0, :, 0], [0.3, 0, 0])


def test_nms_matches_tf_v5_on_random_boxes(tmp_path):
    """Batch of 3, 40 random boxes with one score each: same picks, order and count as TF."""
    import tensorflow as tf

    n, b, m = 3, 40, 12
    pkg = _nms_package(tmp_path, n, b, 1, iou=0.4, score=0.25, max_boxes=m, per_class=False)
    yx = RNG.uniform(0, 0.8, size=(n, b, 2))
    hw = RNG.uniform(0.05, 0.4, size=(n, b, 2))
    corners = np.concatenate([yx, yx + hw], -1).astype(np.float32)
    corners[:, ::5] = corners[:, ::5][..., [2, 3, 0, 1]]  # any diagonal corner pair, as TF allows
    scores = RNG.uniform(0, 1, size=(n, b)).astype(np.float32)
    _, cs, ci, cnt = _nms(pkg, _corners_to_center(corners), scores[..., None])
    for i in range(n):
        sel, sc, valid = tf.raw_ops.NonMaxSuppressionV5(boxes=corners[i], scores=scores[i], max_output_size=m, iou_threshold=0.4,
                                                         score_threshold=0.25, soft_nms_sigma=0.0, pad_to_max_output_size=True)
        v = int(valid)
        assert cnt[i] == v and v >= 2, (cnt[i], v)
        np.testing.assert_array_equal(ci[i, :v], sel.numpy()[:v])
        np.testing.assert_array_equal(ci[i, v:], -1)
        np.testing.assert_allclose(cs[i, :v, 0], sc.numpy()[:v])


# --------------------------------------------------------------------------- end to end: postprocess.detect

H, W, P, K = 8, 8, 3, 3  # 8x8 cells, 3 anchors each -> A = 192, 3 classes
A = H * W * P
N_DET, TOP_K, SCORE, IOU = 8, 60, 0.3, 0.5


def _anchors() -> np.ndarray:
    cy, cx = np.meshgrid((np.arange(H) + 0.5) / H, (np.arange(W) + 0.5) / W, indexing="ij")
    rows = []
    for y, x in zip(cy.ravel(), cx.ravel()):
        for s in (0.2, 0.3, 0.45):
            rows.append([y - s / 2, x - s / 2, y + s / 2, x + s / 2])
    return np.asarray(rows, np.float32)


def _detector_saved_model(path: Path, class_bias: float) -> tuple[Path, object]:
    """image [1, H, W, 3] (0..255) -> 1x1 conv -> raw [1, A, 4 + K] -> postprocess.detect."""
    import tensorflow as tf

    from tfcnn.tasks.postprocess import detect

    rng = np.random.default_rng(3)
    # box deltas: random mixes of the pixel; class logits: about the pixel's sum (weights near 1,
    # distinct so that no two scores tie), so a dark image has no detection and a bright one many
    wk = rng.normal(0, 1.0, size=(1, 1, 3, P, 4 + K)).astype(np.float32)
    wk[..., 4:] = 1.0 + 0.2 * rng.uniform(size=(1, 1, 3, P, K))
    w = tf.constant(wk.reshape(1, 1, 3, P * (4 + K)))
    bias = np.zeros(P * (4 + K), np.float32)
    bias.reshape(P, 4 + K)[:, 4:] = class_bias
    b = tf.constant(bias)
    anchors = _anchors()

    class Det(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, H, W, 3], tf.float32, name="image")])
        def __call__(self, image):
            x = (image / 127.5 - 1.0) * 2.0
            raw = tf.reshape(tf.nn.conv2d(x, w, 1, "VALID") + b, [1, A, 4 + K])
            return detect(raw, anchors, score_threshold=SCORE, nms_iou=IOU, pre_nms_top_k=TOP_K, max_detections=N_DET)

    mod = Det()
    tf.saved_model.save(mod, str(path), signatures={"serving_default": mod.__call__})
    return path, mod


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    from tfcnn.export import coreml as coreml_mod
    from tfcnn.export.formats.coreml_eval import CoreMLEvaluator

    root = tmp_path_factory.mktemp("det_e2e")
    sm, mod = _detector_saved_model(root / "sm", class_bias=0.0)
    names = ["boxes", "classes", "num_detections", "scores"]
    evs = {}
    for precision in ("float32", "float16"):
        pkg = root / f"det_{precision}.mlpackage"
        coreml_mod.convert(sm, pkg, height=H, width=W, labels=["a", "b", "c"], precision=precision, author="t", license="t",
                           version="1", description="d", input_description="i", outputs=names)
        evs[precision] = CoreMLEvaluator(pkg)
    return mod, evs


def _tf(mod, images: np.ndarray) -> dict[str, np.ndarray]:
    outs = [mod(images[i:i + 1].astype(np.float32)) for i in range(len(images))]
    return {k: np.concatenate([o[k].numpy() for o in outs]) for k in outs[0]}


def test_detect_graph_matches_tf_in_float32(detector):
    """Random images where NMS keeps all N_DET detections: identical count, classes and order,
    boxes and scores within 1e-4 (the CoreML program is run through CoreMLEvaluator.predict)."""
    mod, evs = detector
    images = RNG.integers(0, 256, size=(6, H, W, 3), dtype=np.uint8)
    ref = _tf(mod, images)
    got = evs["float32"].predict(images)
    assert set(got) == set(ref) == {"boxes", "classes", "num_detections", "scores"}
    np.testing.assert_array_equal(ref["num_detections"], N_DET)  # the regime the converted program handles (see below)
    np.testing.assert_array_equal(got["num_detections"], ref["num_detections"])
    np.testing.assert_array_equal(got["classes"], ref["classes"])
    np.testing.assert_allclose(got["boxes"], ref["boxes"], atol=1e-4)
    np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-4)


def test_detect_graph_in_float16_is_close(detector):
    """float16 (the export's default): near-tied scores may swap order or pick a neighbouring box,
    so detections are matched by class and box. Measured on 40 images: counts all equal, 96% of
    TF's detections found (same class, box within 1e-2), matched boxes within 1e-3, scores 3e-4."""
    mod, evs = detector
    images = RNG.integers(0, 256, size=(20, H, W, 3), dtype=np.uint8)
    ref = _tf(mod, images)
    got = evs["float16"].predict(images)
    np.testing.assert_array_equal(got["num_detections"], ref["num_detections"])
    found, box_err, score_err = [], [], []
    for i in range(len(images)):
        for j in range(int(ref["num_detections"][i])):
            d = np.abs(got["boxes"][i] - ref["boxes"][i, j]).max(axis=1)
            ok = (got["classes"][i] == ref["classes"][i, j]) & (d < 1e-2)
            found.append(ok.any())
            if ok.any():
                m = int(np.argmin(np.where(ok, d, np.inf)))
                box_err.append(d[m])
                score_err.append(abs(got["scores"][i, m] - ref["scores"][i, j]))
    assert np.mean(found) >= 0.9, np.mean(found)
    assert max(box_err) < 2e-3 and max(score_err) < 1e-3, (max(box_err), max(score_err))


def test_detect_graph_with_no_detection_reports_none(detector):
    """A dark image: no score above the threshold. CoreML's NMS never returns an empty result (it
    reports the best, sub-threshold box), so postprocess.detect masks its rows by the score
    threshold again: the converted program reports 0 detections, as TF does."""
    mod, evs = detector
    dark = np.zeros((1, H, W, 3), np.uint8)
    assert _tf(mod, dark)["num_detections"].tolist() == [0.0]
    got = evs["float32"].predict(dark)
    assert got["num_detections"].tolist() == [0.0]
    assert not got["scores"].any() and not got["boxes"].any()


def test_detect_graph_with_fewer_detections_matches_tf(detector):
    """Between 2 and N_DET - 1 detections: coremltools' TF frontend ignores NonMaxSuppressionV5's
    pad_to_max_output_size (it gathers only the valid rows); postprocess.detect pads the
    selection itself, so the program runs and gives TF's rows."""
    mod, evs = detector
    for v in range(100, 130):  # one grey pixel on a dark image: a few candidates near the threshold
        img = np.zeros((1, H, W, 3), np.uint8)
        img[0, 2, 3] = v
        ref = _tf(mod, img)
        n = int(ref["num_detections"][0])
        if 1 < n < N_DET:
            break
    else:
        pytest.fail("no grey level gave between 2 and N_DET - 1 detections")
    got = evs["float32"].predict(img)
    assert got["num_detections"].tolist() == [float(n)]
    np.testing.assert_array_equal(got["classes"], ref["classes"])
    np.testing.assert_allclose(got["boxes"], ref["boxes"], atol=1e-4)
    np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-4)


@pytest.mark.parametrize("kernel", [2, 3])
def test_conv_transpose_and_argmax_match_tf(tmp_path, kernel):
    """The UNet decoder's ops: Keras Conv2DTranspose ('same', stride 2; kernel 2 needs no crop,
    kernel 3 crops one pixel) and the segmentation mask's argmax, through a converted program."""
    import keras
    import tensorflow as tf

    from tfcnn.export import coreml as coreml_mod
    from tfcnn.export.formats.coreml_eval import CoreMLEvaluator

    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, keras.layers.Conv2DTranspose(4, kernel, strides=2, padding="same")(inp))

    class Seg(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32, name="image")])
        def __call__(self, image):
            out = model(image)
            return {"y": out, "mask": tf.argmax(out, -1, output_type=tf.int32)}

    mod = Seg()
    mod.model = model
    tf.saved_model.save(mod, str(tmp_path / "sm"), signatures={"serving_default": mod.__call__})
    pkg = tmp_path / "ct.mlpackage"
    coreml_mod.convert(tmp_path / "sm", pkg, height=8, width=8, labels=["a"], precision="float32", author="t", license="t",
                       version="1", description="d", input_description="i", outputs=["mask", "y"])
    x = np.random.default_rng(kernel).integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    got = CoreMLEvaluator(pkg).predict(x)
    for i in range(len(x)):
        ref = mod(x[i : i + 1].astype(np.float32))
        np.testing.assert_allclose(got["y"][i], ref["y"].numpy()[0], rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(got["mask"][i], ref["mask"].numpy()[0])


@pytest.mark.parametrize("scale", [2, 4, 8, 1.5])
def test_upsample_bilinear_matches_tf_resize_in_each_sampling_mode(tmp_path, scale):
    """MIL upsample_bilinear (the unet's score fusion: Keras' bilinear UpSampling2D) in its three
    grids: half-pixel centres, align_corners, and TF's legacy ``i * n_in / n_out``, each against
    tf.compat.v1.image.resize_bilinear with the same flags (NCHW in MIL, NHWC in TF)."""
    import tensorflow as tf
    from coremltools.converters.mil import Builder as mb

    x = np.random.default_rng(3).normal(size=(2, 3, 5, 6)).astype(np.float32)
    modes = {"half": (False, True), "align": (True, False), "legacy": (False, False)}

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=_ct().target.iOS16)
    def prog(x):
        return tuple(
            mb.upsample_bilinear(x=x, scale_factor_height=float(scale), scale_factor_width=float(scale),
                                 align_corners=align, half_pixel_centers=half, name=name)
            for name, (align, half) in modes.items()
        )

    out = _run(_package(prog, tmp_path / "up.mlpackage"), x=x)
    size = (int(5 * scale), int(6 * scale))
    nhwc = x.transpose(0, 2, 3, 1)
    for name, (align, half) in modes.items():
        ref = tf.compat.v1.image.resize_bilinear(nhwc, size, align_corners=align, half_pixel_centers=half).numpy()
        assert out[name].shape == (2, 3, *size), name
        np.testing.assert_allclose(out[name], ref.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5, err_msg=name)


def test_keras_bilinear_upsampling_converts_and_evaluates_like_keras(tmp_path):
    """The whole route of a unet score map: Keras UpSampling2D(bilinear) -> SavedModel ->
    coremltools -> the evaluator, equal to Keras."""
    import keras
    import tensorflow as tf

    from tfcnn.export import coreml as coreml_mod
    from tfcnn.export.formats.coreml_eval import CoreMLEvaluator

    inp = keras.Input((8, 8, 3))
    y = keras.layers.UpSampling2D(4, interpolation="bilinear")(keras.layers.Conv2D(2, 1)(inp))
    model = keras.Model(inp, y)

    class Up(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32, name="image")])
        def __call__(self, image):
            return {"y": model(image)}

    mod = Up()
    mod.model = model
    tf.saved_model.save(mod, str(tmp_path / "sm"), signatures={"serving_default": mod.__call__})
    pkg = tmp_path / "ct.mlpackage"
    coreml_mod.convert(tmp_path / "sm", pkg, height=8, width=8, labels=["a"], precision="float32", author="t", license="t",
                       version="1", description="d", input_description="i", outputs=["y"])
    x = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    got = CoreMLEvaluator(pkg).predict(x)
    for i in range(len(x)):
        np.testing.assert_allclose(got["y"][i], mod(x[i : i + 1].astype(np.float32))["y"].numpy()[0], rtol=1e-5, atol=1e-3)


def test_reverse_matches_numpy_flip(tmp_path):
    """MIL reverse (the segmenter's test-time flip: tf.reverse along the width axis)."""
    from coremltools.converters.mil import Builder as mb

    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=_ct().target.iOS15)
    def prog(x):
        return (mb.reverse(x=x, axes=[-1], name="w"), mb.reverse(x=x, axes=[2, 3], name="hw"), mb.reverse(x=x, name="all"))

    out = _run(_package(prog, tmp_path / "rev.mlpackage"), x=x)
    np.testing.assert_array_equal(out["w"], x[..., ::-1])
    np.testing.assert_array_equal(out["hw"], x[:, :, ::-1, ::-1])
    np.testing.assert_array_equal(out["all"], x[::-1, ::-1, ::-1, ::-1])
