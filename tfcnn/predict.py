"""`tfcnn predict`: classify image files with a trained run, using the same decoding as training.

The run is the only input: its data description (class names, input shape) and its model.
Images go through :func:`tfcnn.data.images.load_image`, the folder source's decoder, so a file
is resized and converted exactly as the training images were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tfcnn.data.images import load_image
from tfcnn.data.info import DataInfo
from tfcnn.errors import TfcnnError
from tfcnn.models.saved import load_trained_model
from tfcnn.run import Run
from tfcnn.tasks import get_task


def predict_images(run_dir: "Run | Path | str", images: list[Path], *, top_k: int = 3) -> list[dict[str, Any]]:
    """Top-k (label, probability) for each image file, decoded/resized exactly like the folder source."""
    run = Run.open(run_dir, need=("config", "data", "model"))
    info = run.read(DataInfo)
    task = get_task(run.config().task)
    height, width, channels = info.input_shape
    batch = []
    for path in images:
        if not Path(path).is_file():
            raise TfcnnError(f"image {str(path)!r} does not exist")
        batch.append(load_image(Path(path), size=(height, width), channels=channels))
    model = load_trained_model(run)
    logits = model.predict(np.stack(batch).astype("float32"), verbose=0)
    probs = task.outputs_to_scores(np.asarray(logits))
    k = min(top_k, info.num_classes)
    results = []
    for path, p in zip(images, probs):
        order = np.argsort(-p)[:k]
        results.append(
            {
                "image": str(path),
                "top_k": [{"class_id": int(i), "label": info.class_names[i], "probability": float(p[i])} for i in order],
            }
        )
    return results
