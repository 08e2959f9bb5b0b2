"""`tfcnn predict`: classify image files with a trained run, using the same decoding as training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tfcnn.errors import TfcnnError
from tfcnn.rundir import RunDir


def load_model(run_dir: Path):
    """Reload model.keras, with one clear line when the run has no model yet."""
    import keras

    rd = RunDir(Path(run_dir))
    rd.require(rd.model)
    try:
        return keras.models.load_model(rd.model, compile=False)
    except Exception as exc:  # corrupt or foreign file
        raise TfcnnError(f"{rd.model} could not be loaded ({type(exc).__name__}: {exc}); re-run training") from None


def predict_images(run_dir: Path, images: list[Path], *, top_k: int = 3) -> list[dict[str, Any]]:
    """Top-k (label, probability) for each image file, decoded/resized exactly like the folder source."""
    import keras

    from tfcnn.data.images import load_image
    from tfcnn.pipeline import load_run

    _, info = load_run(run_dir)
    model = load_model(run_dir)
    height, width, channels = info.input_shape
    batch = []
    for path in images:
        if not Path(path).is_file():
            raise TfcnnError(f"image {str(path)!r} does not exist")
        batch.append(load_image(Path(path), size=(height, width), channels=channels))
    logits = model.predict(np.stack(batch).astype("float32"), verbose=0)
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
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
