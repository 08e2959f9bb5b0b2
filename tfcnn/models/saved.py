"""The trained model of a run, loaded one way for every stage that needs it (evaluate, predict,
explain, inspect, the report, export).

``model.keras`` is the deployment artifact written by :func:`tfcnn.train.core.save_model`; every
reader wants inference only, so it is loaded with ``compile=False`` (no optimizer or loss objects
to rebuild). Importing this module imports :mod:`tfcnn.models` first (its parent package), which
registers every builder, so a builder that uses a custom serialisable layer is known to Keras
before the file is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tfcnn.errors import TfcnnError
from tfcnn.models.precision import float32_model
from tfcnn.run import Run
from tfcnn.util import first_line

if TYPE_CHECKING:  # pragma: no cover
    import keras


def _retrain_hint(run: Run) -> str:
    return f"re-run training (`tfcnn train PIPELINE --out {run.root}`)"


def load_trained_model(run: "Run | Path | str") -> "keras.Model":
    """The run's ``model.keras`` (logits out, normalization inside), without its compile state,
    computing in float32 (:func:`tfcnn.models.precision.float32_model`).

    A missing or unreadable file is one :class:`TfcnnError` line naming the file and saying to
    re-run training; Keras raises several exception types for a corrupt or foreign file.
    """
    import keras

    from tfcnn.models import layers as _layers  # noqa: F401  (registers tfcnn's serialisable layers)
    from tfcnn.models import autoencoder_layers as _ae_layers  # noqa: F401  (the autoencoders' layers)

    run = run if isinstance(run, Run) else Run.open(run, need=())
    path = run.path("model")
    if not path.is_file():
        raise TfcnnError(f"{path} is missing; {_retrain_hint(run)}")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - zip, h5, JSON and deserialisation errors alike
        raise TfcnnError(
            f"{path} could not be loaded as a Keras model ({type(exc).__name__}: {first_line(exc)}); {_retrain_hint(run)}"
        ) from None
    return float32_model(model)  # a file written in mixed precision by an earlier tfcnn: evaluate and export in float32
