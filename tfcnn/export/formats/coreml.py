"""CoreML ML Program (.mlpackage, iOS 15+) with an image input and a classifier output.

coremltools converts on Linux but predicts only on macOS: there, verify compares predictions
like any other format; elsewhere it checks what the package itself says (input, outputs,
labels, precision, metadata) and reports that predictions were not compared.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tfcnn.export import coreml as coreml_mod
from tfcnn.export.formats.base import BuildContext, ExportFormat, register


def build(ctx: BuildContext) -> dict[str, Any]:
    from tfcnn.export.card import coreml_entry

    rel = f"coreml/{ctx.name}.mlpackage"
    (ctx.out / "coreml").mkdir(exist_ok=True)
    spec = ctx.call_native(
        coreml_mod.convert,
        ctx.need("mobile_float32"),
        ctx.out / rel,
        height=ctx.geometry.height,
        width=ctx.geometry.width,
        labels=ctx.labels,
        precision=ctx.ecfg.coreml_precision,
        author=ctx.ecfg.author,
        license=ctx.ecfg.license,
        version=str(ctx.version),
        description=ctx.description,
        input_description=ctx.input_text,
    )
    entry = coreml_entry(rel, spec)
    entry["_detail"] = f"{spec['compute_precision']} ML Program"
    return entry


def static_check(version_dir: Path, entry: dict[str, Any], card: dict[str, Any]) -> list[str]:
    contract = card["contract"]
    return coreml_mod.check_spec(
        version_dir / entry["file"],
        {
            "height": contract["input"]["height"],
            "width": contract["input"]["width"],
            "labels": list(card["labels"]),
            "precision": entry.get("compute_precision", "float16"),
            "author": card.get("author"),
            "license": card.get("license"),
            "version": card["version"],
        },
    )


class CoreMLRunner:
    """macOS only: coremltools' own predict on PIL images, probabilities in label order."""

    def __init__(self, version_dir: Path, entry: dict[str, Any], threads: int):
        from PIL import Image

        self._image = Image
        self.path = Path(version_dir) / entry["file"]
        self.model = coreml_mod._ct().models.MLModel(str(self.path))
        self.labels = coreml_mod.read_spec(self.path)["labels"]
        self.threads = threads

    def predict(self, images: np.ndarray) -> np.ndarray:
        return coreml_mod.predict(self.path, images)

    def one(self, image: np.ndarray) -> Callable[[], object]:
        pil = self._image.fromarray(image, mode="RGB")
        return lambda: self.model.predict({"image": pil})


def _thresholds(entry: dict[str, Any]) -> dict[str, float]:
    """The same bar as the TFLite variant of the same precision."""
    return {"agreement": 0.995} if entry.get("compute_precision", "float16") == "float16" else {"agreement": 0.9995}


register(
    ExportFormat(
        name="coreml",
        summary="CoreML ML Program for iOS 15+ (image input, classifier output)",
        files=("coreml/*",),
        build=build,
        runner=CoreMLRunner,
        thresholds=_thresholds,
        needs=("mobile_float32",),
        order=60,
        cannot_run=lambda: None if sys.platform == "darwin" else coreml_mod.SKIP_REASON,
        static_check=static_check,
        card_settings=lambda ctx: {"coreml_precision": ctx.ecfg.coreml_precision},
    )
)
