"""TFLite (LiteRT) variants: float32, float16 weights, dynamic-range int8, full-integer int8, and
the opt-in int16x8 and weight-only int8.

Each variant's file is read back after conversion and again by verify (its recipe: weights'
type and granularity, activations' type, :func:`tfcnn.export.tflite.recipe`), and must be what
its name promises; the full-integer int8 file gets a per-layer error analysis against float
(:mod:`tfcnn.export.quant_debug`).

Every variant takes the same uint8 RGB input, so an app can swap files without touching its
preprocessing; each carries flatbuffer metadata with labels.txt packed in (what MediaPipe Tasks
and Android Studio read): a classifier's for ImageClassifier, a detector's four SSD-style outputs
for ObjectDetector, a segmenter's class_probabilities (moved to the last output, as ImageSegmenter
reads it) and mask, with background-first axis labels. Verify runs them with the LiteRT
interpreter and, for float32 and int8, with the MediaPipe Tasks API Android apps use
(ImageClassifier, ObjectDetector or ImageSegmenter, whichever fits the outputs; each check
returns None for another task's), and every variant again with OpenVINO, a second runtime
(:mod:`tfcnn.export.openvino_check`). Each file's contract entry records what
``tf.lite.experimental.Analyzer`` says of its GPU-delegate compatibility (:mod:`tfcnn.export.gpu_delegate`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tfcnn.errors import ExportError
from tfcnn.export import quant_debug
from tfcnn.export import gpu_delegate
from tfcnn.export import tflite as tflite_mod
from tfcnn.export.openvino_check import OpenVINOCheck
from tfcnn.export.formats.base import BuildContext, ExportFormat, register
from tfcnn.util import format_bytes, write_bytes


def _build(variant: str) -> Callable[[BuildContext], dict[str, Any]]:
    def build(ctx: BuildContext) -> dict[str, Any]:
        from tfcnn.export.card import tflite_entry
        from tfcnn.export.tflite_metadata import (
            SEGMENTATION_LABELS_FILE,
            SEGMENTATION_PROBABILITIES,
            MetadataSpec,
            build_metadata,
            move_output_last,
            output_tensor_order,
            populate,
            read_metadata,
            segmentation_label_lines,
        )

        full_int = variant == "tflite_int8"
        source = ctx.need("mobile_float32" if full_int else "mobile_uint8")
        calibration = ctx.need("representative") if variant in tflite_mod.CALIBRATED else None
        keep = tuple(ctx.ecfg.int8_keep_float) if full_int else ()
        raw = ctx.call_native(tflite_mod.convert, variant, source, calibration, ctx.task.int8_float_names, keep)
        output_contract = ctx.task.output_contract(ctx.labels)
        kind = output_contract.get("kind")
        detection, segmentation = kind == "detection", kind == "segmentation"
        if segmentation:  # MediaPipe's ImageSegmenter reads the last output as the confidences
            raw = move_output_last(raw, SEGMENTATION_PROBABILITIES)
        spec = MetadataSpec(
            name=f"{ctx.name} ({variant})",
            version=str(ctx.version),
            description=f"{ctx.description}. {tflite_mod.DESCRIPTIONS[variant]}.",
            author=ctx.ecfg.author,
            license=ctx.ecfg.license,
            height=ctx.geometry.height,
            width=ctx.geometry.width,
            input_description=ctx.input_text,
            output_description=ctx.task.output_text(ctx.labels),
            contract={"input": ctx.contract_input, "output": output_contract},
            # A detector's and segmenter's metadata follow the file's own output order (MediaPipe matches by position).
            kind="detection" if detection else "segmentation" if segmentation else "classification",
            output_order=tuple(output_tensor_order(raw)) if detection or segmentation else (),
        )
        labels_text = "\n".join(ctx.labels) + "\n"
        files = {"labels.txt": labels_text.encode()}
        if segmentation:
            files[SEGMENTATION_LABELS_FILE] = ("\n".join(segmentation_label_lines(list(ctx.labels))) + "\n").encode()
        data = populate(raw, build_metadata(spec), files)
        path = ctx.out / tflite_mod.ALL_VARIANTS[variant]
        write_bytes(path, data)
        read_back = read_metadata(data)
        if read_back.labels != ctx.labels:  # the packed file must read back
            raise ExportError(f"{path.name}: labels packed in the metadata do not read back")
        if segmentation and read_back.axis_labels != segmentation_label_lines(list(ctx.labels)):
            raise ExportError(f"{path.name}: the segmentation axis labels packed in the metadata do not read back")
        entry = tflite_entry(ctx.out, variant)
        wrong = tflite_mod.recipe_problems(variant, tflite_mod.recipe(path))  # read back from the written file
        if wrong:
            raise ExportError(f"{path.name}: " + "; ".join(wrong))
        if full_int:  # where the int8 model loses signal, layer by layer (tfcnn.export.quant_debug)
            entry["quant_debug"] = quant_debug.write_analysis(ctx, source, calibration, data, tflite_mod.ALL_VARIANTS[variant])
        entry["gpu_delegate"] = gpu_delegate.entry_for(ctx, path)  # the analyzer's verdict, and whether it means anything
        entry["_detail"] = format_bytes(len(data))
        return entry

    return build


class LiteRTFileRunner:
    """The LiteRT interpreter on one variant's file, batch 1, fixed threads."""

    def __init__(self, version_dir: Path, entry: dict[str, Any], threads: int):
        path = Path(version_dir) / entry["file"]
        names = tflite_mod.signature_outputs(path)
        # A classifier's one probabilities tensor; another task's outputs by signature name.
        if not names or "probabilities" in names:
            self.runner = tflite_mod.LiteRTRunner(path, threads)
        else:
            self.runner = tflite_mod.LiteRTSignatureRunner(path, threads)
        self.threads = threads

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.runner.predict(images)

    def one(self, image: np.ndarray) -> Callable[[], object]:
        return lambda: self.runner.raw(image)


def mediapipe_check(
    tflite_path: Path, images: np.ndarray, litert_probs: np.ndarray | dict[str, np.ndarray], labels: list[str]
) -> dict[str, Any] | None:
    """Classify with MediaPipe Tasks ImageClassifier (labels from the TFLite metadata only).

    Agreement counts MediaPipe's top-1 as matching LiteRT when it is LiteRT's argmax or ties with
    it (uint8 outputs tie often); category_name must equal labels.txt for that index, which can
    only happen if MediaPipe read the label file packed in the metadata. A segmenter's dict
    (class_probabilities and mask) goes to :func:`mediapipe_segmenter_check` (ImageSegmenter), so
    the format's two client checks stay one per kind of MediaPipe input/output layout; None for
    another model with several named outputs (a detector's or reconstruction's dict):
    ImageClassifier is not its client.
    """
    if isinstance(litert_probs, dict):
        if all(k in litert_probs for k in SEGMENTATION_KEYS):
            return mediapipe_segmenter_check(tflite_path, images, litert_probs, labels)
        return None
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(tflite_path)), max_results=1)
    agree = names_ok = 0
    mismatches: list[dict[str, Any]] = []
    with vision.ImageClassifier.create_from_options(opts) as clf:
        for i, img in enumerate(images):
            res = clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img)))
            top = res.classifications[0].categories[0]
            p = litert_probs[i]
            ok = top.index == int(p.argmax()) or abs(float(p[top.index]) - float(p.max())) <= 1e-6
            agree += int(ok)
            named = top.category_name == labels[top.index]
            names_ok += int(named)
            if (not ok or not named) and len(mismatches) < 10:
                mismatches.append(
                    {"index": i, "mediapipe": [top.index, top.category_name, round(float(top.score), 6)], "litert_class": int(p.argmax())}
                )
    n = len(images)
    result = {
        "client": "mediapipe.tasks.python.vision.ImageClassifier",
        "checked": n,
        "top1_agreement_with_litert": round(agree / n, 6) if n else None,
        "labels_from_metadata": bool(n) and names_ok == n,
        "mismatches": mismatches,
    }
    result["passed"] = bool(n) and agree == n and names_ok == n
    return result


DETECTION_KEYS = ("boxes", "classes", "scores", "num_detections")
BOX_TOLERANCE_PX = 1.0  # MediaPipe truncates its pixel box to integers
SCORE_TOLERANCE = 1e-5


def mediapipe_detector_check(
    tflite_path: Path, images: np.ndarray, litert_outputs: Any, labels: list[str], score_floor: float = 0.0
) -> dict[str, Any] | None:
    """Detect with MediaPipe Tasks ObjectDetector (labels from the TFLite metadata only) and
    compare every detection with LiteRT's on the same file.

    MediaPipe reads the four outputs through the metadata (names, box corner order, labels), so
    agreement proves the metadata is right, not just present. What it returns differs in form
    from the tensors, which the comparison allows for: boxes are integer pixels of the image
    given (truncated, hence the 1-pixel tolerance on origin and size); rows with an identical box
    but different classes are merged into one detection with several categories; with a label
    file, a category carries the label name and no index (MediaPipe drops ``label_id`` once it
    has text). So each LiteRT row (of the first ``num_detections``) must be matched, one to one,
    by a MediaPipe category with that row's class name (or index when MediaPipe gives no name)
    and score within 1e-5, on a box within 1 pixel of the row's, or be one of a set of tied
    scores that the two runtimes broke differently (:func:`_match_detections`); the counts must
    be equal, and at least one row must match exactly. ``labels_from_metadata`` holds when every
    category's name is ``labels[class]`` (None when nothing was detected to tell). score_threshold
    0 and max_results = D make MediaPipe return all the model returns. None when
    ``litert_outputs`` is not a detector's dict (a classifier's array).

    ``score_floor`` (the int8 variant: 0.3) compares only the rows scoring at least that, on
    both sides: quantized logits give many detections exactly the same low score, and which of
    those tied candidates top-k and NMS keep differs between MediaPipe's TFLite build and the
    LiteRT wheel; the confident rows, the ones an app shows, must still agree one to one.
    """
    if not isinstance(litert_outputs, dict) or any(k not in litert_outputs for k in DETECTION_KEYS):
        return None
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    boxes = np.asarray(litert_outputs["boxes"], np.float32)
    classes = np.asarray(litert_outputs["classes"], np.float32)
    scores = np.asarray(litert_outputs["scores"], np.float32)
    counts = np.asarray(litert_outputs["num_detections"], np.float32).reshape(len(boxes), -1)[:, 0] if len(boxes) else np.zeros(0, np.float32)
    max_results = int(boxes.shape[1]) if boxes.ndim == 3 and boxes.shape[1] else -1
    client = "mediapipe.tasks.python.vision.ObjectDetector"
    n = len(images)
    opts = vision.ObjectDetectorOptions(
        base_options=BaseOptions(model_asset_path=str(tflite_path)),
        running_mode=vision.RunningMode.IMAGE,
        score_threshold=0.0,
        max_results=max_results,
    )
    try:
        detector = vision.ObjectDetector.create_from_options(opts)
    except Exception as exc:  # MediaPipe says why it rejects the model (metadata, outputs, labels)
        msg = " ".join(str(exc).split())
        return {
            "client": client, "checked": n, "detection_agreement_with_litert": 0.0, "labels_from_metadata": False,
            "mismatches": [], "passed": False,
            "failures": [f"MediaPipe ObjectDetector cannot load {Path(tflite_path).name}: {type(exc).__name__}: {msg}"],
        }
    rows_total = exact_total = tied_total = images_ok = images_exact = names_ok = categories_seen = 0
    mismatches: list[dict[str, Any]] = []
    with detector:
        for i, img in enumerate(images):
            res = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img)))
            found = [(d.bounding_box, c.index, c.category_name, float(c.score)) for d in res.detections for c in d.categories]
            count = int(round(float(counts[i])))
            b, c, s = boxes[i], classes[i], scores[i]
            if score_floor > 0:
                found = [f for f in found if f[3] >= score_floor - 1e-5]
                rows = [j for j in range(count) if s[j] >= score_floor - 1e-5]
                b, c, s, count = b[rows], c[rows], s[rows], len(rows)
            exact, tied, problems = _match_detections(found, b, c, s, count, labels, int(img.shape[1]), int(img.shape[0]))
            rows_total += max(count, len(found))
            exact_total += exact
            tied_total += tied
            images_ok += int(not problems)
            images_exact += int(not problems and not tied)
            for _, index, cname, _ in found:
                categories_seen += 1
                names_ok += int(bool(cname) and cname in labels and (index is None or labels[index] == cname))
            if problems and len(mismatches) < 10:
                mismatches.append({
                    "index": i,
                    "problems": problems[:5],
                    "mediapipe": [
                        [[bb.origin_x, bb.origin_y, bb.width, bb.height], index, cname, round(score, 6)]
                        for bb, index, cname, score in found[:10]
                    ],
                })
    # None: no detection on any image, so no category name to prove the labels were read (which
    # fails the check: nothing it compared shows MediaPipe read the metadata).
    labelled = (names_ok == categories_seen) if categories_seen else None
    result: dict[str, Any] = {
        "client": client,
        "checked": n,
        "detection_agreement_with_litert": round(exact_total / rows_total, 6) if rows_total else (1.0 if n else None),
        "tie_reorderings": tied_total,
        "images_agreeing": round(images_ok / n, 6) if n else None,
        "images_agreeing_exactly": round(images_exact / n, 6) if n else None,
        "labels_from_metadata": labelled,
        "score_floor": score_floor,
        "mismatches": mismatches,
    }
    # Ties are forgiven only next to exact matches: rows that all differ prove nothing about the metadata.
    proven = exact_total > 0 or rows_total == 0
    result["passed"] = bool(n) and images_ok == n and labelled is True and proven
    if labelled is None and n:
        result["failures"] = [
            f"no detection scoring >= {score_floor:g} on any of the {n} checked images: nothing shows that MediaPipe "
            "read the labels and box layout from the metadata"
        ]
    elif not result["passed"]:
        result["failures"] = [
            f"MediaPipe ObjectDetector agrees with LiteRT on {images_ok}/{n} images "
            f"({result['detection_agreement_with_litert']} of detections exactly), labels_from_metadata {labelled}"
        ]
    return result


def _match_detections(
    found: list[tuple[Any, int | None, str | None, float]],
    boxes: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray,
    count: int,
    labels: list[str],
    width: int,
    height: int,
) -> tuple[int, int, list[str]]:
    """One image: (exact matches, tie reorderings, problems) between MediaPipe's categories and
    LiteRT's first ``count`` rows.

    Exact: same class, score within 1e-5, box within 1 pixel. Rows left over on both sides are
    accepted as a tie reordering when their scores agree pairwise once sorted and each such score
    is shared by yet another row of the image (a third, on either side: the pair itself is two),
    so a unique score must match exactly (a wrong label or box cannot hide as a tie): a quantized model
    gives many candidates the very same score, and which of them top-k and NMS keep is up to each
    runtime's kernels (MediaPipe's interpreter is not the LiteRT wheel's), as the classifier
    check accepts a tied top-1.
    """
    used = [False] * len(found)
    left_scores: list[float] = []
    exact = 0
    for r in range(count):
        cls = int(round(float(classes[r])))
        name = labels[cls] if 0 <= cls < len(labels) else None
        ymin, xmin, ymax, xmax = (float(v) for v in boxes[r])
        want = (xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height)
        for j, (bb, index, cname, score) in enumerate(found):
            if used[j]:
                continue
            same_class = index == cls if index is not None else (bool(cname) and cname == name)
            got = (bb.origin_x, bb.origin_y, bb.width, bb.height)
            near = all(abs(g - w) <= BOX_TOLERANCE_PX + 1e-6 for g, w in zip(got, want))
            if same_class and near and abs(score - float(scores[r])) <= SCORE_TOLERANCE:
                used[j] = True
                exact += 1
                break
        else:
            left_scores.append(float(scores[r]))
    problems: list[str] = []
    if len(found) != count:
        problems.append(f"MediaPipe returned {len(found)} categories, LiteRT num_detections {count}")
    theirs = sorted(score for (_, _, _, score), u in zip(found, used) if not u)
    ours = sorted(left_scores)
    all_scores = [float(v) for v in scores[:count]] + [score for _, _, _, score in found]

    def tied(value: float) -> bool:  # the score is shared by another row of the same image (either side)
        return sum(abs(v - value) <= SCORE_TOLERANCE for v in all_scores) >= 3

    same = len(theirs) == len(ours) and all(abs(a - b) <= SCORE_TOLERANCE for a, b in zip(ours, theirs))
    if same and all(tied(v) for v in ours):
        return exact, len(ours), problems
    problems.append(
        f"{len(ours)} LiteRT rows (scores {[round(v, 6) for v in ours[:5]]}) have no MediaPipe match of the same class, "
        f"score and box, nor a tied one (unmatched MediaPipe scores {[round(v, 6) for v in theirs[:5]]})"
    )
    return exact, 0, problems


SEGMENTATION_KEYS = ("class_probabilities", "mask")
MIN_MASK_AGREEMENT = 0.999  # share of pixels whose MediaPipe category is LiteRT's argmax (or ties with it)
CONFIDENCE_TOLERANCE = 1e-5  # float probabilities; a quantized output allows one step more


def mediapipe_segmenter_check(
    tflite_path: Path, images: np.ndarray, litert_outputs: Any, labels: list[str]
) -> dict[str, Any] | None:
    """Segment with MediaPipe Tasks ImageSegmenter (labels from the TFLite metadata only) and
    compare its masks with LiteRT's outputs of the same file.

    ImageSegmenter reads the *last* output tensor as per-class confidences (the export moves
    class_probabilities there; with two outputs it takes the first as a "quality score" and
    ignores it) and the axis labels of the last output metadata, and applies the activation in
    SEGMENTER_METADATA (NONE: the model already applies softmax). Compared per image at the
    model size (MediaPipe returns masks at the size of the image given):

    * ``confidence_masks``: one per class, background first, each within 1e-5 of LiteRT's
      class_probabilities (plus one quantization step when the file's probabilities are
      quantized);
    * ``category_mask``: equal to LiteRT's argmax on >= 99.9% of pixels, a pixel whose two
      classes score within that tolerance counting as a tie (agreeing);
    * labels: ``ImageSegmenter.labels`` must be ``["background", *labels]``.

    A file MediaPipe refuses or fails on (e.g. a full-integer int8 file whose probabilities are
    quantized next to the int32 mask: its dequantization step accepts no int32 tensor) fails
    with MediaPipe's error text. None when ``litert_outputs`` is not a segmenter's dict.
    """
    if not isinstance(litert_outputs, dict) or any(k not in litert_outputs for k in SEGMENTATION_KEYS):
        return None
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    from tfcnn.export.tflite_metadata import SEGMENTATION_PROBABILITIES, output_tensor_order, segmentation_label_lines

    client = "mediapipe.tasks.python.vision.ImageSegmenter"
    name = Path(tflite_path).name
    n = len(images)
    probs = np.asarray(litert_outputs["class_probabilities"], np.float32)
    masks = np.asarray(litert_outputs["mask"]).reshape(probs.shape[:-1]).astype(np.int64)
    k = int(probs.shape[-1]) if probs.ndim == 4 else 0
    step = _output_step(tflite_path, SEGMENTATION_PROBABILITIES)
    tol = CONFIDENCE_TOLERANCE + step
    want_labels = segmentation_label_lines(list(labels))
    result: dict[str, Any] = {
        "client": client, "checked": n, "pixel_agreement_with_litert": 0.0, "exact_pixel_agreement": 0.0,
        "max_confidence_diff": None, "confidence_tolerance": tol, "confidence_masks": None, "labels_from_metadata": False,
        "mismatches": [], "passed": False,
    }
    order = output_tensor_order(Path(tflite_path).read_bytes())
    failures: list[str] = []
    if not order or order[-1] != SEGMENTATION_PROBABILITIES:
        failures.append(
            f"{name}: the last output tensor is {order[-1] if order else None!r}, not {SEGMENTATION_PROBABILITIES!r}: "
            "MediaPipe ImageSegmenter reads the last output as the class confidences (re-export)"
        )
    opts = vision.ImageSegmenterOptions(
        base_options=BaseOptions(model_asset_path=str(tflite_path)),
        running_mode=vision.RunningMode.IMAGE,
        output_confidence_masks=True,
        output_category_mask=True,
    )
    try:
        segmenter = vision.ImageSegmenter.create_from_options(opts)
    except Exception as exc:  # MediaPipe says why it rejects the model
        result["failures"] = failures + [f"MediaPipe ImageSegmenter cannot load {name}: {type(exc).__name__}: {_one_line(exc)}"]
        return result
    agree = exact = pixels = 0
    max_diff = 0.0
    counts: set[int] = set()
    try:
        got_labels = list(segmenter.labels)
        result["labels_from_metadata"] = got_labels == want_labels
        for i, img in enumerate(images):
            res = segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img)))
            conf = [np.asarray(c.numpy_view(), np.float32).reshape(img.shape[:2]) for c in res.confidence_masks or []]
            counts.add(len(conf))
            cat = np.asarray(res.category_mask.numpy_view()).reshape(img.shape[:2]).astype(np.int64)
            if len(conf) != k or cat.shape != masks[i].shape:
                failures.append(
                    f"image {i}: MediaPipe returned {len(conf)} confidence masks of {cat.shape[1]}x{cat.shape[0]}, "
                    f"LiteRT {k} classes at {masks.shape[2]}x{masks.shape[1]}"
                )
                break
            c = np.stack(conf, -1)
            diff = float(np.max(np.abs(c - probs[i]))) if c.size else 0.0
            max_diff = max(max_diff, diff)
            same = cat == masks[i]
            inside = (cat >= 0) & (cat < k)
            picked = np.take_along_axis(probs[i], np.clip(cat, 0, k - 1)[..., None], -1)[..., 0]
            best = np.take_along_axis(probs[i], masks[i][..., None], -1)[..., 0]
            ok = same | (inside & (np.abs(picked - best) <= tol))
            agree += int(ok.sum())
            exact += int(same.sum())
            pixels += int(same.size)
            if (diff > tol or not ok.all()) and len(result["mismatches"]) < 10:
                ys, xs = np.nonzero(~ok) if not ok.all() else np.unravel_index([int(np.argmax(np.abs(c - probs[i]).max(-1)))], cat.shape)
                result["mismatches"].append({
                    "index": i, "max_confidence_diff": diff, "pixels_disagreeing": int((~ok).sum()),
                    "first": {"y": int(ys[0]), "x": int(xs[0]), "mediapipe_class": int(cat[ys[0], xs[0]]),
                              "litert_class": int(masks[i][ys[0], xs[0]]),
                              "mediapipe_confidences": [round(float(v), 6) for v in c[ys[0], xs[0]]],
                              "litert_probabilities": [round(float(v), 6) for v in probs[i][ys[0], xs[0]]]},
                })
    except Exception as exc:  # e.g. a calculator that refuses one of the output tensors
        failures.append(f"MediaPipe ImageSegmenter failed on {name}: {type(exc).__name__}: {_one_line(exc)}")
    finally:
        closing = _close_segmenter(segmenter)  # a graph that failed reports its error again on close
        if closing and not any("ImageSegmenter failed" in f for f in failures):
            failures.append(f"MediaPipe ImageSegmenter failed on {name}: {closing}")
    result.update(
        pixel_agreement_with_litert=round(agree / pixels, 6) if pixels else 0.0,
        exact_pixel_agreement=round(exact / pixels, 6) if pixels else 0.0,
        max_confidence_diff=max_diff if pixels else None,
        confidence_masks=sorted(counts)[0] if len(counts) == 1 else sorted(counts) or None,
    )
    if not failures and n:
        if result["pixel_agreement_with_litert"] < MIN_MASK_AGREEMENT:
            failures.append(
                f"MediaPipe category_mask agrees with LiteRT's argmax on {100 * result['pixel_agreement_with_litert']:.3f}% "
                f"of pixels (< {100 * MIN_MASK_AGREEMENT:.1f}%, ties allowed)"
            )
        if max_diff > tol:
            failures.append(f"MediaPipe confidence masks differ from LiteRT's class_probabilities by {max_diff:.3g} (> {tol:.3g})")
        if not result["labels_from_metadata"]:
            failures.append(
                f"MediaPipe read labels {got_labels[:5]}{'...' if len(got_labels) > 5 else ''} from {name}, "
                f"expected {want_labels[:5]}{'...' if len(want_labels) > 5 else ''} (background + labels.txt)"
            )
    if not n:
        failures.append("no image to check")
    result["passed"] = not failures
    if failures:
        result["failures"] = failures
    return result


def _close_segmenter(segmenter: Any) -> str | None:
    """Close a MediaPipe task; when its graph failed, close() raises that error *before* it lets go
    of the handle and its dispatcher, and the second close() that ``__del__`` then makes (at some
    garbage collection) waits for ever on the dispatcher. So finish the close here (the wheel's
    own steps after the C call) and return the error text, None when it closed cleanly."""
    try:
        segmenter.close()
        return None
    except Exception as exc:
        error = f"{type(exc).__name__}: {_one_line(exc)}"
    try:
        segmenter._handle = None  # noqa: SLF001 - what close() does after MpImageSegmenterClose
        segmenter._dispatcher.close()  # noqa: SLF001
        segmenter._lib.close()  # noqa: SLF001
    except Exception:  # pragma: no cover - a wheel whose task object differs: nothing more we can do
        pass
    return error


def _one_line(exc: BaseException) -> str:
    """MediaPipe's multi-line status text, without the source-location trace."""
    text = str(exc).split("=== Source Location Trace")[0]
    return " ".join(text.split())


def _output_step(tflite_path: Path, name: str) -> float:
    """The quantization scale of the serving signature's output ``name`` (0 when it is float)."""
    try:
        details = tflite_mod.interpreter(Path(tflite_path)).get_signature_runner("serving_default").get_output_details()
        scale, _ = details[name]["quantization"]
        return float(scale) if details[name]["dtype"] != np.float32 else 0.0
    except (KeyError, ValueError):
        return 0.0


# OpenVINO's cross-check of each variant against LiteRT on the same file (tfcnn.export.openvino_check):
# float files to float32 round-off. The full-integer file: OpenVINO emulates each requantization in
# float where LiteRT uses fixed-point multipliers, so a layer may land one step apart and steps add up
# (compact_cnn on Fashion-MNIST: 99.3% of outputs on the same step, none more than 3 apart), hence 4
# steps at most and 90% on the very step (a misread zero point moves them all); a one-step score
# difference can flip a flag or mask pixel at a tie, hence 99% agreement there. Any other variant
# (dynamic range: LiteRT quantizes activations at run time, OpenVINO computes them in float): 0.02
# and 99% agreement, the rounding of run-time int8 activations.
_OPENVINO = {
    "tflite_float32": OpenVINOCheck("tflite", max_abs_diff=1e-5),
    "tflite_float16": OpenVINOCheck("tflite", max_abs_diff=1e-5),
    "tflite_int8": OpenVINOCheck("tflite", max_abs_diff=1e-5, quantized_steps=4.0, quantized_exact=0.9, discrete_agreement=0.99),
}
_OPENVINO_OTHER = OpenVINOCheck("tflite", max_abs_diff=0.02, quantized_steps=1.0, agreement=0.99, discrete_agreement=0.99)
mediapipe_check.client = mediapipe_detector_check.client = "mediapipe"  # their section in verification.json

_LIMITS = {
    "tflite_float32": {"max_abs_diff": 1e-4, "agreement": 0.9995},
    "tflite_float16": {"agreement": 0.995},
    "tflite_dynamic": {"agreement": 0.99},
    "tflite_int8": {"agreement": 0.985, "max_accuracy_drop": 0.01},
    # int8 weights as dynamic range, activations 256x finer than int8's: at least dynamic range's agreement
    "tflite_int16x8": {"agreement": 0.99, "max_accuracy_drop": 0.01},
    "tflite_weight_only_int8": {"agreement": 0.99},  # dynamic range's weights, float activations
}
_SUMMARIES = {
    "tflite_float32": "TFLite float32",
    "tflite_float16": "TFLite float16 weights",
    "tflite_dynamic": "TFLite dynamic-range int8 weights",
    "tflite_int8": "TFLite full-integer int8 (uint8 in/out), calibrated on training images",
    "tflite_int16x8": "TFLite int16 activations / int8 weights (uint8 in, float32 out), calibrated on training images",
    "tflite_weight_only_int8": "TFLite weight-only int8 (ai-edge-quantizer): int8 weights dequantized at run time, float compute",
}


def _recipe_check(variant: str) -> Callable[[Path, dict[str, Any], dict[str, Any]], list[str]]:
    """verify's static check: the file's recipe, read back again, is what the variant's name promises
    (and what contract.json recorded at export)."""

    def check(version_dir: Path, entry: dict[str, Any], card: dict[str, Any]) -> list[str]:
        rel = entry.get("file", tflite_mod.ALL_VARIANTS[variant])
        found = tflite_mod.recipe(Path(version_dir) / rel)
        problems = [f"{rel}: {p}" for p in tflite_mod.recipe_problems(variant, found)]
        recorded = (entry.get("recipe") or {}).get("kind")
        if recorded is not None and recorded != found["kind"]:
            problems.append(f"{rel}: contract.json records a {recorded} recipe, the file is {found['kind']}")
        return problems

    return check


_NEEDS = {"tflite_int8": ("mobile_float32", "representative"), "tflite_int16x8": ("mobile_uint8", "representative")}

for _order, _variant in enumerate(tflite_mod.ALL_VARIANTS, start=20):
    register(
        ExportFormat(
            name=_variant,
            summary=_SUMMARIES[_variant],
            files=(tflite_mod.ALL_VARIANTS[_variant],)
            + ((quant_debug.sidecar(tflite_mod.ALL_VARIANTS[_variant]),) if _variant == "tflite_int8" else ()),
            build=_build(_variant),
            runner=LiteRTFileRunner,
            thresholds=lambda entry, v=_variant: dict(_LIMITS[v]),
            needs=_NEEDS.get(_variant, ("mobile_uint8",)),
            order=_order,
            default=_variant in tflite_mod.VARIANTS,  # the extra variants are opt-in (export.formats)
            # the extra variants are tested on classifiers only
            tasks=("classification", "reconstruction", "detection", "segmentation") if _variant in tflite_mod.VARIANTS
            else ("classification",),
            static_check=_recipe_check(_variant),
            client_checks=(
                (mediapipe_check, functools.partial(mediapipe_detector_check, score_floor=0.3 if _variant == "tflite_int8" else 0.0))
                if _variant in ("tflite_int8", "tflite_float32") else ()
            ) + (_OPENVINO.get(_variant, _OPENVINO_OTHER),),
            changes_key="int8_changed" if _variant == "tflite_int8" else None,
            card_settings=lambda ctx, v=_variant: {
                "tflite_variants": {v: tflite_mod.DESCRIPTIONS[v]},
                **({"representative_samples": ctx.ecfg.representative_samples,
                    "calibration": quant_debug.calibration_record(ctx)} if v in tflite_mod.CALIBRATED else {}),
            },
        )
    )
