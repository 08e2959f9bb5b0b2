"""Four TFLite (LiteRT) variants: float32, float16 weights, dynamic-range int8, full-integer int8.

Every variant takes the same uint8 RGB input, so an app can swap files without touching its
preprocessing; each carries flatbuffer metadata with labels.txt packed in (what MediaPipe Tasks
and Android Studio read). Verify runs them with the LiteRT interpreter and, for float32 and
int8, with MediaPipe Tasks' ImageClassifier, the API Android apps use.
"""

from __future__ import annotations

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
        from tfcnn.export.tflite_metadata import MetadataSpec, build_metadata, populate, read_metadata

        full_int = variant == "tflite_int8"
        source = ctx.need("mobile_float32" if full_int else "mobile_uint8")
        raw = ctx.call_native(tflite_mod.convert, variant, source, ctx.need("representative") if full_int else None)
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
            contract={"input": ctx.contract_input, "output": ctx.task.output_contract(ctx.labels)},
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


def mediapipe_check(tflite_path: Path, images: np.ndarray, litert_probs: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Classify with MediaPipe Tasks ImageClassifier (labels from the TFLite metadata only).

    Agreement counts MediaPipe's top-1 as matching LiteRT when it is LiteRT's argmax or ties with
    it (uint8 outputs tie often); category_name must equal labels.txt for that index, which can
    only happen if MediaPipe read the label file packed in the metadata.
    """
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
            tasks=("classification", "reconstruction"),
            client_checks=(mediapipe_check,) if _variant in ("tflite_int8", "tflite_float32") else (),
            changes_key="int8_changed" if _variant == "tflite_int8" else None,
            card_settings=lambda ctx, v=_variant: {
                "tflite_variants": {v: tflite_mod.DESCRIPTIONS[v]},
                **({"representative_samples": ctx.ecfg.representative_samples} if v == "tflite_int8" else {}),
            },
        )
    )
