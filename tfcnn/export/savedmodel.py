"""SavedModel for TF Serving: writing it and calling it like a client would (models.config, the
warm-up file and TF Serving's own loader are in :mod:`tfcnn.export.serving`).

What TF itself does with a bad request, and why `predict_savedmodel` checks first:
* wrong dtype (e.g. float32 pixels) -> ``InvalidArgumentError: cannot compute ... as input #0
  (zero-based) was expected to be a uint8 tensor but is a float tensor`` - correct but cryptic;
* wrong height/width -> the signature's TensorSpec is NOT enforced when a loaded signature is
  called, and global pooling would happily compute garbage, so the exported graph asserts the
  shape itself (``InvalidArgumentError: image must be uint8 RGB with shape [N, H, W, 3]``);
* wrong channel count -> the same in-graph assertion.
`predict_savedmodel` turns all of these into one TfcnnError line before TF sees the tensor.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

from tfcnn.errors import ExportError, TfcnnError
from tfcnn.util import write_text


def write_savedmodel(model, labels_file: Path, out_dir: Path, task=None, fit: str = "stretch") -> None:
    """serving_default + serving_bytes (resizing with export.fit) written straight into the
    version dir (TF Serving layout)."""
    import tensorflow as tf

    from tfcnn.export.wrapper import serving_archive

    archive = serving_archive(model, labels_file, task, fit)
    archive.write_out(str(out_dir), options=tf.saved_model.SaveOptions(), verbose=False)
    if not (out_dir / "assets" / labels_file.name).is_file():
        raise ExportError(f"SavedModel in {out_dir} has no assets/{labels_file.name}; the label table did not export")


def load_savedmodel(version_dir: Path):
    import tensorflow as tf

    if not (Path(version_dir) / "saved_model.pb").is_file():
        raise TfcnnError(f"{version_dir} has no saved_model.pb; export with the savedmodel format first")
    return tf.saved_model.load(str(version_dir))


def _signature_input(sig) -> tuple[str, Any]:
    _, kwargs = sig.structured_input_signature
    if len(kwargs) != 1:
        raise TfcnnError(f"expected a single-input signature, got inputs {sorted(kwargs)}")
    return next(iter(kwargs.items()))


def predict_savedmodel(
    source: Path | Any, images: Any, *, signature: str = "serving_default"
) -> dict[str, np.ndarray]:
    """Run a SavedModel signature on uint8 RGB images (or encoded bytes for serving_bytes).

    `source` is a version directory or an already loaded SavedModel. Wrong dtype/shape raises a
    TfcnnError naming what was expected instead of TF's InvalidArgumentError.
    """
    import tensorflow as tf

    loaded = load_savedmodel(Path(source)) if isinstance(source, (str, Path)) else source
    if signature not in loaded.signatures:
        raise TfcnnError(f"signature {signature!r} not in the SavedModel; it has {sorted(loaded.signatures)}")
    sig = loaded.signatures[signature]
    name, spec = _signature_input(sig)
    if spec.dtype == tf.string:
        data = [bytes(b) for b in images]
        tensor = tf.constant(data, dtype=tf.string)
    else:
        arr = np.asarray(images)
        want = [d for d in spec.shape]  # [None, H, W, 3]
        desc = f"uint8 RGB images of shape [N, {want[1]}, {want[2]}, {want[3]}]"
        if arr.dtype != np.uint8:
            hint = " (convert with np.clip(x, 0, 255).astype(np.uint8); pixels are 0..255, not 0..1)"
            raise TfcnnError(f"{signature}: input {name!r} must be {desc}, got dtype {arr.dtype}{hint}")
        if arr.ndim == 3:
            raise TfcnnError(f"{signature}: input {name!r} must be {desc}, got shape {list(arr.shape)}; add the batch axis (x[None])")
        if arr.ndim != 4 or list(arr.shape[1:]) != [int(d) for d in want[1:]]:
            hint = "; repeat grayscale to 3 channels" if arr.ndim == 4 and arr.shape[-1] == 1 else ""
            raise TfcnnError(
                f"{signature}: input {name!r} must be {desc}, got shape {list(arr.shape)}{hint} "
                "(or send encoded images to serving_bytes, which resizes)"
            )
        tensor = tf.constant(arr)
    out = sig(**{name: tensor})
    return {k: v.numpy() for k, v in out.items()}


# --------------------------------------------------------------------------- TF Serving REST body


def _decode_value(value: Any) -> Any:
    """TF Serving's JSON mapping: {"b64": s} is bytes; lists nest; numbers stay numbers."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        raise TfcnnError(f"an instance value object must be {{'b64': ...}}, got keys {sorted(value)}")
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    return value


def _as_tensor(value: Any, spec, where: str) -> np.ndarray:
    """JSON numbers -> an array of the signature's numeric dtype, refusing what would wrap around."""
    arr = np.asarray(value)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise TfcnnError(f"{where}: expected a nested list of numbers for {spec.dtype.name}, got ragged or non-numeric data")
    if spec.dtype.name == "uint8":
        if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.all(np.equal(np.mod(arr, 1), 0))):
            raise TfcnnError(f"{where}: uint8 pixels must be integers in 0..255 (got range {arr.min()}..{arr.max()})")
        arr = arr.astype(np.uint8)
    return arr


def rest_predict(loaded, body: dict | str) -> dict[str, Any]:
    """Answer a TF Serving REST :predict body (row "instances" or columnar "inputs" format).

    Mirrors what tensorflow_model_server does with the JSON so tests can feed real request bodies
    through the reloaded signatures: ``{"instances": [[[[0, 0, 0], ...]]]}`` for serving_default,
    ``{"signature_name": "serving_bytes", "instances": [{"b64": "..."}]}`` for encoded images.
    """
    if isinstance(body, str):
        body = json.loads(body)
    sig_name = body.get("signature_name", "serving_default")
    if sig_name not in loaded.signatures:
        raise TfcnnError(f"signature_name {sig_name!r} not in the SavedModel; it has {sorted(loaded.signatures)}")
    sig = loaded.signatures[sig_name]
    name, spec = _signature_input(sig)
    string_input = spec.dtype.name == "string"
    if "instances" in body:
        rows = [_decode_row(r, name) for r in body["instances"]]
        data = rows if string_input else _as_tensor(rows, spec, "instances")
        out = predict_savedmodel(loaded, data, signature=sig_name)
        return {"predictions": [{k: _jsonable(out[k][i]) for k in sorted(out)} for i in range(len(rows))]}
    if "inputs" in body:
        value = _decode_row(body["inputs"], name)
        data = value if string_input else _as_tensor(value, spec, "inputs")
        out = predict_savedmodel(loaded, data, signature=sig_name)
        return {"outputs": {k: _jsonable(v) for k, v in out.items()}}
    raise TfcnnError("request body needs an 'instances' (row) or 'inputs' (columnar) key")


def _decode_row(row: Any, input_name: str) -> Any:
    """A row is the bare value (single-input signature) or {input_name: value}."""
    if isinstance(row, dict) and set(row) != {"b64"}:
        if input_name not in row:
            raise TfcnnError(f"instance names inputs {sorted(row)}; this signature's input is {input_name!r}")
        row = row[input_name]
    return _decode_value(row)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v] if v.dtype == object else v.tolist()
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v
