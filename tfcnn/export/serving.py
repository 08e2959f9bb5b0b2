"""TF Serving's own view of an export: its protos, its warm-up file and its restore path.

No ``tensorflow_model_server`` binary can be installed on these machines, so tfcnn checks with
the closest real things instead of trusting ``tf.saved_model.load``:

* the SavedModel is loaded with ``tf.compat.v1.saved_model.loader.load`` in a fresh graph and
  session, the restore path TF Serving's C++ loader takes (it fails on some Keras 3 SavedModels
  that the TF2 loader accepts), and both signatures are run through that session with the warm-up
  requests; each signature's ``method_name`` must be ``tensorflow/serving/predict``;
* ``models.config`` is parsed with TF Serving's own ``ModelServerConfig`` proto (text format), so a
  config the server would refuse is caught here; ``base_path`` is ``export.serving_base/<name>``
  (e.g. ``/models`` for the usual container layout) or, by default, the repository's absolute path;
* ``assets.extra/tf_serving_warmup_requests`` holds ``PredictionLog`` records (one request per
  signature, real test images), which TF Serving replays at load so the first real request does
  not pay for graph warm-up.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tfcnn.errors import ExportError
from tfcnn.util import write_text

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"  # the name TF Serving looks for
PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURES = ("serving_default", "serving_bytes")


def _apis():
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError as exc:  # a declared dependency: only a broken install gets here
        raise ExportError(f"TF Serving's protos are not importable ({exc}); pip install tensorflow-serving-api") from None
    return model_pb2, predict_pb2, prediction_log_pb2, model_server_config_pb2


# --------------------------------------------------------------------------- models.config


def models_config_text(name: str, base_path: str, versions: Sequence[int]) -> str:
    """The ``--model_config_file`` text for one model, built as TF Serving's proto and printed by protobuf."""
    from google.protobuf import text_format

    *_, msc = _apis()
    config = msc.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    model.model_version_policy.specific.versions.extend(int(v) for v in versions)
    return text_format.MessageToString(config)


def write_models_config(name_dir: Path, name: str, serving_base: str | None = None) -> Path:
    """``models.config`` for every complete version under ``name_dir`` (see the module docstring)."""
    versions = sorted(int(p.name) for p in name_dir.iterdir() if p.is_dir() and p.name.isdigit())
    base = f"{serving_base.rstrip('/')}/{name}" if serving_base else str(name_dir.resolve())
    path = name_dir / "models.config"
    write_text(path, models_config_text(name, base, versions))
    return path


def read_models_config(path: Path) -> Any:
    """Parse ``models.config`` as TF Serving does (text-format ModelServerConfig), or one error line."""
    from google.protobuf import text_format

    *_, msc = _apis()
    try:
        return text_format.Parse(Path(path).read_text(), msc.ModelServerConfig())
    except (text_format.ParseError, OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: TF Serving would not read it ({' '.join(str(exc).split())})") from None


# --------------------------------------------------------------------------- warm-up


def warmup_records(name: str, images: np.ndarray) -> list[bytes]:
    """Serialized PredictionLog records: ``serving_default`` on a uint8 RGB batch of one image and
    ``serving_bytes`` on the same image as PNG bytes."""
    import tensorflow as tf
    from PIL import Image

    _, predict_pb2, prediction_log_pb2, _ = _apis()
    records = []
    for i, image in enumerate(np.asarray(images, dtype=np.uint8)[:1]):
        req = predict_pb2.PredictRequest()
        req.model_spec.name = name
        req.model_spec.signature_name = "serving_default"
        req.inputs["image"].CopyFrom(tf.make_tensor_proto(image[None]))
        records.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString())
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "PNG")
        req = predict_pb2.PredictRequest()
        req.model_spec.name = name
        req.model_spec.signature_name = "serving_bytes"
        req.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([buf.getvalue()], dtype=tf.string))
        records.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString())
    return records


def write_warmup(version_dir: Path, name: str, images: np.ndarray) -> Path:
    """``assets.extra/tf_serving_warmup_requests`` (a TFRecord file) in a version being built."""
    import tensorflow as tf

    path = Path(version_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in warmup_records(name, images):
            writer.write(record)
    return path


def read_warmup(version_dir: Path) -> list[Any]:
    """The PredictRequests of a version's warm-up file (TF Serving replays them at load)."""
    import tensorflow as tf

    _, _, prediction_log_pb2, _ = _apis()
    path = Path(version_dir) / WARMUP_FILE
    requests = []
    for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        if not log.HasField("predict_log"):
            raise ExportError(f"{path}: a warm-up record is not a predict_log")
        requests.append(log.predict_log.request)
    return requests


# --------------------------------------------------------------------------- TF Serving's restore path

# How far TF Serving's v1 session and tf.saved_model.load may differ on a float output: the two
# runtimes optimise the same graph differently (grappler's remapper fuses conv + bias + activation
# in one and not the other), so probabilities of a deep model differ by float32 rounding (1.1e-6
# seen on the UNet). The SavedModel's own limit against Keras is 1e-5; this is the same.
LOADER_ATOL = 1e-5


def run_v1(version_dir: Path, requests: Sequence[Any]) -> tuple[dict[str, str], list[dict[str, np.ndarray]]]:
    """Load the SavedModel the way TF Serving's C++ loader does (v1 loader, fresh graph and
    session, tag ``serve``) and run each PredictRequest through its signature's tensors.

    Returns (signature -> method_name, one output dict per request).
    """
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, [tf.saved_model.SERVING], str(version_dir))
        methods = {k: v.method_name for k, v in meta.signature_def.items() if not k.startswith("__")}
        outputs = []
        for req in requests:
            sig = meta.signature_def[req.model_spec.signature_name or "serving_default"]
            feed = {sig.inputs[k].name: tf.make_ndarray(v) for k, v in req.inputs.items()}
            fetch = {k: t.name for k, t in sig.outputs.items()}
            outputs.append(sess.run(fetch, feed_dict=feed))
    return methods, outputs


def check_version(version_dir: Path, name: str, height: int, width: int) -> list[str]:
    """What TF Serving would trip over in this version (empty: nothing): the v1 restore path, the
    method names, the warm-up file and models.config. Each problem is one readable line."""
    import tensorflow as tf

    vd = Path(version_dir)
    problems: list[str] = []
    try:
        requests = read_warmup(vd)
    except (ExportError, tf.errors.OpError, OSError) as exc:
        return [f"{WARMUP_FILE}: unreadable ({' '.join(str(exc).split())[:200]})"]
    sigs = [r.model_spec.signature_name for r in requests]
    if sorted(set(sigs)) != sorted(SIGNATURES):
        problems.append(f"{WARMUP_FILE}: requests for {sigs}, expected one per signature {list(SIGNATURES)}")
    for r in requests:
        image = r.inputs.get("image")
        if image is not None and list(tf.make_ndarray(image).shape[1:]) != [height, width, 3]:
            problems.append(f"{WARMUP_FILE}: image of shape {tf.make_ndarray(image).shape}, the contract says [N, {height}, {width}, 3]")
    try:
        methods, outs = run_v1(vd, requests)
    except Exception as exc:  # noqa: BLE001 - whatever the v1 loader raises is the finding
        return problems + [f"saved_model.pb: TF Serving's (v1) loader fails: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"]
    for sig in SIGNATURES:
        if methods.get(sig) != PREDICT_METHOD:
            problems.append(f"saved_model.pb: signature {sig} has method_name {methods.get(sig)!r}, TF Serving's Predict API needs {PREDICT_METHOD!r}")
    loaded = tf.saved_model.load(str(vd))
    for req, out in zip(requests, outs):
        sig = req.model_spec.signature_name
        fn = loaded.signatures[sig]
        want = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in req.inputs.items()})
        for key, value in want.items():
            got, ref = np.asarray(out[key]), value.numpy()
            if got.dtype.kind == "f" and not (np.isfinite(got).all() and np.allclose(got, ref, rtol=0, atol=LOADER_ATOL)):
                problems.append(f"saved_model.pb: {sig}/{key} differs between TF Serving's loader and tf.saved_model.load "
                                f"(max |d| {float(np.nanmax(np.abs(got - ref))) if got.shape == ref.shape else 'shape'})")
            elif got.dtype.kind != "f" and not np.array_equal(got, ref):
                problems.append(f"saved_model.pb: {sig}/{key} differs between TF Serving's loader and tf.saved_model.load")
    config = vd.parent / "models.config"
    if not config.is_file():
        problems.append(f"{config} is missing (tfcnn export writes it; TF Serving's --model_config_file)")
    else:
        try:
            parsed = read_models_config(config)
        except ExportError as exc:
            problems.append(str(exc))
        else:
            entries = [c for c in parsed.model_config_list.config if c.name == name]
            if not entries:
                problems.append(f"{config}: no model named {name!r}")
            elif vd.name.isdigit() and int(vd.name) not in entries[0].model_version_policy.specific.versions:
                problems.append(f"{config}: version {vd.name} is not served (versions: {list(entries[0].model_version_policy.specific.versions)})")
            elif not entries[0].base_path.rstrip("/").endswith(f"/{name}") and Path(entries[0].base_path) != vd.parent.resolve():
                problems.append(f"{config}: base_path {entries[0].base_path!r} does not end in the model name {name!r}")
    return problems


def serving_summary(config: Path) -> dict[str, Any]:
    """models.config as a plain dict (for the card and the README example)."""
    parsed = read_models_config(config)
    return json.loads(json.dumps([
        {"name": c.name, "base_path": c.base_path, "versions": list(c.model_version_policy.specific.versions)}
        for c in parsed.model_config_list.config
    ]))
