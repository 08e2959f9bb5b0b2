"""CoreML ML Program (.mlpackage, iOS 15+) with an image input and a classifier output.

coremltools converts on Linux but predicts only on macOS. There verify runs coremltools' own
predict; elsewhere it runs the package's program with tfcnn's numpy MIL evaluator
(:mod:`.coreml_eval`), so CoreML is compared with Keras on every machine, with the limits of the
TFLite variant of the same precision. verification.json names the evaluator that was used, and
on Linux reports no latency (the evaluator's speed says nothing about CoreML's).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tfcnn.export import coreml as coreml_mod
from tfcnn.export.formats import coreml_eval
from tfcnn.export.formats.base import FORMATS, BuildContext, ExportFormat, register, runner_result


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
        # A classifier gets CoreML's classifier outputs; another task its named multiarrays.
        outputs=ctx.task.output_contract(ctx.labels).get("tensors"),
        output_description=ctx.task.output_text(ctx.labels),
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
            "outputs": (contract.get("output") or {}).get("tensors"),
        },
    )


def _labels_txt(version_dir: Path) -> list[str]:
    """labels.txt of the version: what an app looks the probability dictionary up with."""
    return (Path(version_dir) / "labels.txt").read_text(encoding="utf-8").splitlines()


class CoreMLRunner:
    """macOS only: coremltools' own predict on PIL images, probabilities in labels.txt order."""

    evaluator = "coremltools"
    latency_note = None

    def __init__(self, version_dir: Path, entry: dict[str, Any], threads: int):
        from PIL import Image

        self._image = Image
        self.path = Path(version_dir) / entry["file"]
        self.model = coreml_mod._ct().models.MLModel(str(self.path))
        self.labels = _labels_txt(version_dir)
        self.threads = threads

    def predict(self, images: np.ndarray) -> np.ndarray:
        return coreml_mod.predict(self.path, images, self.labels)

    def one(self, image: np.ndarray) -> Callable[[], object]:
        pil = self._image.fromarray(image, mode="RGB")
        return lambda: self.model.predict({"image": pil})


class MILEvaluatorRunner:
    """Off macOS: the package's ML Program run by tfcnn's numpy MIL evaluator.

    Probabilities are looked up by label name in labels.txt order (as an app does), so a package
    whose class list is reordered disagrees with Keras instead of passing.
    """

    evaluator = coreml_eval.NAME
    latency_note = f"not measured: on this machine CoreML runs only in the {coreml_eval.NAME}, whose speed is not CoreML's"

    def __init__(self, version_dir: Path, entry: dict[str, Any], threads: int):
        self.path = Path(version_dir) / entry["file"]
        self.model = coreml_eval.CoreMLEvaluator(self.path)
        self.labels = _labels_txt(version_dir)
        self.threads = threads

    def predict(self, images: np.ndarray) -> "np.ndarray | dict[str, np.ndarray]":
        with coreml_eval.blas_threads(self.threads):
            out = self.model.predict(images, self.labels)
        return out if isinstance(out, np.ndarray) else runner_result(out)

    def one(self, image: np.ndarray) -> Callable[[], object]:
        def run() -> object:
            with coreml_eval.blas_threads(self.threads):
                return self.model.predict(image[None], self.labels)

        return run


def _runner(version_dir: Path, entry: dict[str, Any], threads: int) -> CoreMLRunner | MILEvaluatorRunner:
    cls = CoreMLRunner if sys.platform == "darwin" else MILEvaluatorRunner
    return cls(version_dir, entry, threads)


def _thresholds(entry: dict[str, Any]) -> dict[str, float]:
    """The same bar as the TFLite variant of the same precision (read from that format's record)."""
    twin = "tflite_float16" if entry.get("compute_precision", "float16") == "float16" else "tflite_float32"
    return dict(FORMATS[twin].thresholds(entry))


register(
    ExportFormat(
        name="coreml",
        summary="CoreML ML Program for iOS 15+ (image input, classifier output)",
        files=("coreml/*",),
        build=build,
        runner=_runner,
        thresholds=_thresholds,
        needs=("mobile_float32",),
        order=60,
        tasks=("classification", "reconstruction", "detection", "segmentation"),
        static_check=static_check,
        card_settings=lambda ctx: {"coreml_precision": ctx.ecfg.coreml_precision},
    )
)
