"""SavedModel for TF Serving: `serving_default` (uint8 images) and `serving_bytes` (JPEG/PNG bytes).

The version directory itself is the SavedModel (TF Serving's ``<name>/<version>/`` layout), with
a warm-up file of real test images (``assets.extra/``); the runner feeds ``serving_default`` the
way a REST ``instances`` body does, and the static check loads it the way TF Serving's C++ loader
does (:mod:`tfcnn.export.serving`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from tfcnn.export.formats.base import PRIMARY_OUTPUT, BuildContext, ExportFormat, register, runner_result
from tfcnn.export.openvino_check import OpenVINOCheck


def build(ctx: BuildContext) -> dict[str, Any]:
    from tfcnn.export.card import savedmodel_entry
    from tfcnn.export.savedmodel import write_savedmodel

    from tfcnn.export.serving import write_warmup
    from tfcnn.export.source import bundle_of

    # The label table reads labels.txt at save time and copies it to assets/.
    write_savedmodel(ctx.model, ctx.out / "labels.txt", ctx.out, ctx.task, ctx.ecfg.fit)
    x_test = bundle_of(ctx.run).arrays["test"][0]
    write_warmup(ctx.out, ctx.name, np.repeat(x_test[:1], 3, axis=-1) if x_test.shape[-1] == 1 else x_test[:1])
    return savedmodel_entry(ctx.out)


def static_check(version_dir: Path, entry: dict[str, Any], card: dict[str, Any]) -> list[str]:
    """TF Serving's view: its v1 loader, Predict method names, the warm-up file, models.config."""
    from tfcnn.export.serving import check_version

    contract = card["contract"]["input"]
    return check_version(version_dir, card["name"], int(contract["height"]), int(contract["width"]))


class SavedModelRunner:
    """serving_default of the version's SavedModel, fed uint8 RGB batches."""

    def __init__(self, version_dir: Path, entry: dict[str, Any], threads: int):
        import tensorflow as tf

        from tfcnn.export.savedmodel import load_savedmodel

        self.loaded = load_savedmodel(version_dir)
        self.sig = self.loaded.signatures["serving_default"]
        self.threads = tf.config.threading.get_intra_op_parallelism_threads()

    def predict(self, images: np.ndarray, batch: int = 256) -> "np.ndarray | dict[str, np.ndarray]":
        import tensorflow as tf

        names = [k for k in self.sig.structured_outputs if k == PRIMARY_OUTPUT] or list(self.sig.structured_outputs)
        parts = [self.sig(image=tf.constant(images[i : i + batch])) for i in range(0, len(images), batch)]
        if not parts:
            return np.zeros((0, 0), np.float32)
        return runner_result({k: np.concatenate([p[k].numpy() for p in parts]) for k in names})

    def one(self, image: np.ndarray) -> Callable[[], object]:
        import tensorflow as tf

        t = tf.constant(image[None])
        key = PRIMARY_OUTPUT if PRIMARY_OUTPUT in self.sig.structured_outputs else next(iter(self.sig.structured_outputs))
        return lambda: self.sig(image=t)[key].numpy()


register(
    ExportFormat(
        name="savedmodel",
        summary="TF Serving SavedModel (serving_default + serving_bytes, labels asset)",
        files=("saved_model.pb", "fingerprint.pb", "variables/*", "assets/*", "assets.extra/*"),
        build=build,
        runner=SavedModelRunner,
        static_check=static_check,
        thresholds=lambda entry: {"max_abs_diff": 1e-5, "agreement": 1.0},
        order=10,
        tasks=("classification", "reconstruction", "detection", "segmentation"),
        client_checks=(OpenVINOCheck("savedmodel", max_abs_diff=1e-5),),  # a second runtime on serving_default
    )
)
