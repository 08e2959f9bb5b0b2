"""Four TFLite (LiteRT) variants: float32, float16 weights, dynamic-range int8, full-integer int8.

Every variant takes the same uint8 RGB input, so an app can swap files without touching its
preprocessing; each carries flatbuffer metadata with labels.txt packed in (what MediaPipe Tasks
and Android Studio read): a classifier's for ImageClassifier, a detector's four SSD-style outputs
for ObjectDetector. Verify runs them with the LiteRT interpreter and, for float32 and int8, with
the MediaPipe Tasks API Android apps use (ImageClassifier or ObjectDetector, whichever fits the
outputs; each check returns None for the other task's).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tfcnn.errors import ExportError
from tfcnn.export import tflite as tflite_mod
from tfcnn.export.formats.base import BuildContext, ExportFormat, register
from tfcnn.util import format_bytes, write_bytes


def _build(variant: str) -> Callable[[BuildContext], dict[str, Any]]:
    def build(ctx: BuildContext) -> dict[str, Any]:
        from tfcnn.export.card import tflite_entry
        from tfcnn.export.tflite_metadata import MetadataSpec, build_metadata, output_tensor_order, populate, read_metadata

        full_int = variant == "tflite_int8"
        source = ctx.need("mobile_float32" if full_int else "mobile_uint8")
        raw = ctx.call_native(
            tflite_mod.convert, variant, source, ctx.need("representative") if full_int else None, ctx.task.int8_float_names
        )
        output_contract = ctx.task.output_contract(ctx.labels)
        detection = output_contract.get("kind") == "detection"
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
            # A detector's metadata follows the file's own output order (MediaPipe matches by position).
            kind="detection" if detection else "classification",
            output_order=tuple(output_tensor_order(raw)) if detection else (),
        )
        labels_text = "\n".join(ctx.labels) + "\n"
        data = populate(raw, build_metadata(spec), {"labels.txt": labels_text.encode()})
        path = ctx.out / tflite_mod.VARIANTS[variant]
        write_bytes(path, data)
        if read_metadata(data).labels != ctx.labels:  # the packed file must read back
            raise ExportError(f"{path.name}: labels packed in the metadata do not read back")
        entry = tflite_entry(ctx.out, variant)
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
    only happen if MediaPipe read the label file packed in the metadata. None for a model with
    several named outputs (a detector's or reconstruction's dict): ImageClassifier is not its client.
    """
    if isinstance(litert_probs, dict):
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


_LIMITS = {
    "tflite_float32": {"max_abs_diff": 1e-4, "agreement": 0.9995},
    "tflite_float16": {"agreement": 0.995},
    "tflite_dynamic": {"agreement": 0.99},
    "tflite_int8": {"agreement": 0.985, "max_accuracy_drop": 0.01},
}
_SUMMARIES = {
    "tflite_float32": "TFLite float32",
    "tflite_float16": "TFLite float16 weights",
    "tflite_dynamic": "TFLite dynamic-range int8 weights",
    "tflite_int8": "TFLite full-integer int8 (uint8 in/out), calibrated on training images",
}

for _order, _variant in enumerate(tflite_mod.VARIANTS, start=20):
    register(
        ExportFormat(
            name=_variant,
            summary=_SUMMARIES[_variant],
            files=(tflite_mod.VARIANTS[_variant],),
            build=_build(_variant),
            runner=LiteRTFileRunner,
            thresholds=lambda entry, v=_variant: dict(_LIMITS[v]),
            needs=("mobile_float32", "representative") if _variant == "tflite_int8" else ("mobile_uint8",),
            order=_order,
            tasks=("classification", "reconstruction", "detection", "segmentation"),
            client_checks=(
                (mediapipe_check, functools.partial(mediapipe_detector_check, score_floor=0.3 if _variant == "tflite_int8" else 0.0))
                if _variant in ("tflite_int8", "tflite_float32") else ()
            ),
            changes_key="int8_changed" if _variant == "tflite_int8" else None,
            card_settings=lambda ctx, v=_variant: {
                "tflite_variants": {v: tflite_mod.DESCRIPTIONS[v]},
                **({"representative_samples": ctx.ecfg.representative_samples} if v == "tflite_int8" else {}),
            },
        )
    )
