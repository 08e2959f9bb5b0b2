"""SavedModel for TF Serving: `serving_default` (uint8 images) and `serving_bytes` (JPEG/PNG bytes).

The version directory itself is the SavedModel (TF Serving's ``<name>/<version>/`` layout);
the runner feeds ``serving_default`` the way a REST ``instances`` body does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from tfcnn.export.formats.base import BuildContext, ExportFormat, register


def build(ctx: BuildContext) -> dict[str, Any]:
    from tfcnn.export.card import savedmodel_entry
    from tfcnn.export.savedmodel import write_savedmodel

    # The label table reads labels.txt at save time and copies it to assets/.
    write_savedmodel(ctx.model, ctx.out / "labels.txt", ctx.out, ctx.task)
    return savedmodel_entry(ctx.out)


class SavedModelRunner:
    """serving_default of the version's SavedModel, fed uint8 RGB batches."""

    def __init__(self, version_dir: Path, entry: dict[str, Any], threads: int):
        import tensorflow as tf

        from tfcnn.export.savedmodel import load_savedmodel

        self.loaded = load_savedmodel(version_dir)
        self.sig = self.loaded.signatures["serving_default"]
        self.threads = tf.config.threading.get_intra_op_parallelism_threads()

    def predict(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        import tensorflow as tf

        out = [self.sig(image=tf.constant(images[i : i + batch]))["probabilities"].numpy() for i in range(0, len(images), batch)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def one(self, image: np.ndarray) -> Callable[[], object]:
        import tensorflow as tf

        t = tf.constant(image[None])
        return lambda: self.sig(image=t)["probabilities"].numpy()


register(
    ExportFormat(
        name="savedmodel",
        summary="TF Serving SavedModel (serving_default + serving_bytes, labels asset)",
        files=("saved_model.pb", "fingerprint.pb", "variables/*", "assets/*"),
        build=build,
        runner=SavedModelRunner,
        thresholds=lambda entry: {"max_abs_diff": 1e-5, "agreement": 1.0},
        order=10,
    )
)
