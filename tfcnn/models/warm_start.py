"""Starting a model from a classifier tfcnn trained before (its ``model.keras``).

Two settings use it: ``model.init_from`` (any registered classifier: its layers start from a
previous run's, e.g. Fashion-MNIST classes 0-4 before 5-9) and a detector's or segmenter's
``model.options.backbone_weights`` (its backbone from a classifier of the same body). Both copy
every layer with weights whose name the new model also has, except ``logits`` (another task's or
another class count's head); both take the classifier's ``normalize`` statistics, because its
features were learned on them, not on the new data's. A namesake of another shape (other model
options) is one ConfigError naming the layer and both shapes; nothing copied is one error too,
never a silently random start. ``key`` is the setting named in those errors.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from tfcnn.errors import ConfigError, TfcnnError
from tfcnn.models.lazy import keras
from tfcnn.util import first_line

KERAS_SUFFIX = ".keras"


def classifier_file(path: str, key: str) -> Path:
    """The classifier file a setting names; missing is one ConfigError line."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"{key} = {path!r} does not exist; train the classifier first "
            "(`tfcnn train PIPELINE` writes runs/<name>/model.keras) or use 'none'"
        )
    return file


def load_classifier(path: str, key: str) -> Any:
    """The .keras classifier, inference only (read once per file version per process: a build
    asks for its normalisation and then its weights); unreadable is one TfcnnError line."""
    file = classifier_file(path, key)
    stat = file.stat()
    return _load_keras(str(file.resolve()), stat.st_mtime_ns, stat.st_size, key, path)


@functools.lru_cache(maxsize=2)
def _load_keras(resolved: str, _mtime_ns: int, _size: int, key: str, path: str) -> Any:
    from tfcnn.models import layers as _layers  # noqa: F401  (registers tfcnn's serialisable layers)

    try:
        return keras.saving.load_model(resolved, compile=False)
    except Exception as exc:  # noqa: BLE001 - zip, JSON and deserialisation errors alike
        raise TfcnnError(f"{key} = {path!r} could not be loaded as a Keras model ({type(exc).__name__}: {first_line(exc)})") from None


def classifier_normalization(path: str, key: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the ``normalize`` layer of a tfcnn classifier's .keras."""
    import numpy as np

    try:
        layer = load_classifier(path, key).get_layer("normalize")
    except ValueError:
        raise ConfigError(f"{key} = {path!r} has no 'normalize' layer; it is not a tfcnn classifier") from None
    conf = layer.get_config()
    mean = np.ravel(np.asarray(conf["mean"], np.float64))
    std = np.sqrt(np.ravel(np.asarray(conf["variance"], np.float64)))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def all_layers(model: Any) -> list[Any]:
    """Every layer, nested models and their layers included."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(all_layers(layer))
    return out


def copy_layers(model: Any, path: str, key: str, *, hint: str) -> list[str]:
    """Copy the classifier's namesake layers (not ``logits``) into ``model``; the names copied.

    ``hint`` completes the error when the shapes differ (which options to give)."""
    source = load_classifier(path, key)
    present = {layer.name: layer for layer in all_layers(model)}
    copied = []
    for layer in all_layers(source):
        target = present.get(layer.name)
        if not layer.weights or target is None or layer.name == "logits" or isinstance(layer, keras.Model):
            continue
        values = layer.get_weights()
        shapes = [tuple(v.shape) for v in values]
        want = [tuple(w.shape) for w in target.get_weights()]
        if shapes != want:
            raise ConfigError(f"{key} = {path!r}: layer {layer.name!r} has weights {shapes} there but {want} in this {model.name}; {hint}")
        target.set_weights(values)
        copied.append(layer.name)
    return copied
