"""`tfcnn.export_model`: export and verify a Keras classifier that tfcnn never trained.

The exporter and verify work on a run (config, data description, model, test data). For a model
trained anywhere else this module writes a small *reference run* beside the versions,
``<root>/<name>/reference-<version>/`` (TF Serving ignores non-numeric directories): the model
wrapped with its declared normalization, the calibration and test images, and a config naming
them. The model card points at it, so ``tfcnn verify`` can re-check the version later exactly as
it checks a tfcnn run's export.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tfcnn.config import from_dict
from tfcnn.errors import ExportError
from tfcnn.models.precision import float32_model
from tfcnn.run import Metrics, Run
from tfcnn.util import atomic_path, ensure_dir, log

OUTPUTS = ("logits", "probabilities")


def _geometry(model, input_size: Sequence[int] | None = None, channels: int | None = None) -> tuple[int, int, int, int]:
    """(height, width, channels, classes) of a single-input image classifier, or one error line.

    A model built for any image size (``keras.Input((None, None, 3))``) is exported at
    ``input_size``; a fixed size must agree with it when both are given.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(f"model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; export needs one image input and one class-score output")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        raise ExportError(f"model input shape is {shape}; export needs (batch, height, width, 1 or 3)")
    wanted = (*(input_size or (None, None)), channels)
    if input_size is not None and (len(input_size) != 2 or min(int(v) for v in input_size) < 1):
        raise ExportError(f"input_size = {tuple(input_size)!r}; give (height, width), both >= 1")
    dims = []
    for axis, (have, want) in enumerate(zip(shape[1:], wanted)):
        if have is not None and want is not None and int(have) != int(want):
            raise ExportError(f"model input shape is {shape} but input_size/channels ask for {wanted}; leave them out or make them agree")
        dims.append(have if have is not None else want)
    if any(d is None for d in dims):
        raise ExportError(f"model input shape is {shape}; pass input_size=(height, width) (and channels=) to export a model built for any size")
    if dims[2] not in (1, 3):
        raise ExportError(f"model input has {dims[2]} channels; the export contract supports 1 (grayscale) or 3 (RGB)")
    shape = (None, *dims)
    out = tuple(model.compute_output_shape((1, *dims))) if any(d is None for d in model.inputs[0].shape[1:]) else tuple(model.outputs[0].shape)
    out = (None, *out[1:])
    if len(out) != 2 or out[-1] is None or out[-1] < 2:
        raise ExportError(f"model output shape is {out}; export needs (batch, classes) with at least 2 classes")
    return int(shape[1]), int(shape[2]), int(shape[3]), int(out[-1])


def _images(value: Any, what: str, hwc: tuple[int, int, int], with_labels: bool):
    """Arrays or a tf.data.Dataset (batched or not) -> uint8 NHWC (and int labels), checked."""
    labels = None
    if hasattr(value, "element_spec"):  # a tf.data.Dataset
        xs, ys = [], []
        for element in value.as_numpy_iterator():
            if with_labels:
                if not isinstance(element, tuple) or len(element) != 2:
                    raise ExportError(f"{what}: the dataset must yield (images, labels) pairs")
                x, y = element
                ys.append(np.atleast_1d(y))
            else:
                x = element[0] if isinstance(element, tuple) else element
            xs.append(x if x.ndim == 4 else x[None])
        if not xs:
            raise ExportError(f"{what}: the dataset is empty")
        images = np.concatenate(xs)
        labels = np.concatenate(ys) if with_labels else None
    elif with_labels:
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ExportError(f"{what} must be (images, labels) arrays or a dataset of (images, labels) batches")
        images, labels = np.asarray(value[0]), np.asarray(value[1])
    else:
        images = np.asarray(value)
    if images.ndim == 3 and hwc[2] == 1:
        images = images[..., None]
    if images.ndim != 4 or tuple(images.shape[1:]) != hwc:
        raise ExportError(f"{what}: images have shape {images.shape}, the model takes (N, {hwc[0]}, {hwc[1]}, {hwc[2]})")
    if images.dtype != np.uint8:
        if images.dtype.kind not in "iuf" or not np.all(np.isfinite(images)):
            raise ExportError(f"{what}: images are {images.dtype}; give uint8 pixels 0..255 (the export contract's input)")
        if images.min() < 0 or images.max() > 255 or not np.array_equal(images, np.round(images)):
            raise ExportError(
                f"{what}: images are {images.dtype} in [{images.min():.3g}, {images.max():.3g}]; give raw pixels 0..255 "
                "and declare the model's scaling with normalization= (it then runs in-graph)"
            )
        images = images.astype(np.uint8)
    if len(images) == 0:
        raise ExportError(f"{what}: no images")
    if labels is not None:
        if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
            raise ExportError(f"{what}: labels must be {len(images)} integer class ids, got {labels.dtype} {labels.shape}")
    return images, labels


def _normalization(normalization: Any, channels: int) -> tuple[list[float], list[float]]:
    """mean/std in pixel units 0..255 that the wrapper applies in-graph before the model."""
    if normalization in (None, "in_graph", "none"):
        return [0.0] * channels, [1.0] * channels
    if isinstance(normalization, dict):
        if "scale" in normalization:  # x * scale + offset, e.g. {"scale": 1/255} for [0, 1] models
            scale = float(normalization["scale"])
            offset = float(normalization.get("offset", 0.0))
            if not math.isfinite(scale) or scale <= 0 or not math.isfinite(offset):
                raise ExportError(f"normalization scale/offset must be finite with scale > 0, got {normalization}")
            return [-offset / scale] * channels, [1.0 / scale] * channels
        mean = [float(v) for v in np.broadcast_to(np.asarray(normalization.get("mean", 0.0), float), (channels,))]
        std = [float(v) for v in np.broadcast_to(np.asarray(normalization.get("std", 1.0), float), (channels,))]
        if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise ExportError(f"normalization mean/std must be finite with std > 0, got {normalization}")
        return mean, std
    raise ExportError(
        f"normalization = {normalization!r}; use 'in_graph' (the model takes raw 0..255 pixels), "
        "{'mean': [...], 'std': [...]} in pixel units, or {'scale': 1/255, 'offset': 0.0}"
    )


def _reference_model(model, mean: list[float], std: list[float], outputs: str, geometry: tuple[int, int, int, int]):
    """The model as tfcnn exports it: raw pixels in at a fixed size, normalization in-graph, logits out."""
    import keras

    h, w, c, _ = geometry
    inp = keras.Input((h, w, c), name="image")
    norm = keras.layers.Normalization(mean=mean, variance=[s * s for s in std], name="normalize")
    y = model(norm(inp))
    if outputs == "probabilities":
        # softmax(log p) = p, so the exported probabilities are the model's own.
        from tfcnn.models.layers import ProbabilitiesToLogits

        y = ProbabilitiesToLogits(name="to_logits")(y)
    return keras.Model(inp, y, name=f"{model.name}_export")


def _check_outputs_kind(model, x: np.ndarray, mean: list[float], std: list[float], outputs: str) -> None:
    """What the model returns on a few test images agrees with ``outputs``, before anything is written.

    A logits model exported as "probabilities" (or the reverse) converts and verifies perfectly,
    because every format reproduces the same wrong scores; only the scores themselves show it.
    """
    sample = (x[:64].astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    raw = np.asarray(model(sample, training=False), dtype=np.float64)
    if not np.isfinite(raw).all():
        raise ExportError("the model's outputs on the test images are not finite (NaN or inf); its weights are broken")
    sums = raw.sum(axis=-1)
    probabilities = raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6 and np.abs(sums - 1).max() < 1e-3
    if outputs == "probabilities" and not probabilities:
        raise ExportError(
            f"outputs = 'probabilities' (--outputs probabilities), but the model's outputs are not probabilities "
            f"(values {raw.min():.3g}..{raw.max():.3g}, rows sum to {sums.min():.3g}..{sums.max():.3g}); "
            "pass outputs='logits' for a model without a softmax"
        )
    if outputs == "logits" and probabilities and np.abs(sums - 1).max() < 1e-5:
        raise ExportError(
            "outputs = 'logits', but every row of the model's outputs is a probability distribution (it ends in a softmax); "
            "pass outputs='probabilities' (--outputs probabilities)"
        )


def export_model(
    model,
    *,
    labels: Sequence[str],
    test: Any,
    out: str | Path = "export",
    name: str = "model",
    version: int | None = None,
    representative: Any = None,
    normalization: Any = "in_graph",
    outputs: str = "logits",
    formats: Sequence[str] | None = None,
    verify: bool = True,
    description: str = "",
    author: str = "tfcnn",
    license: str = "Apache-2.0",
    threads: int = 1,
    latency_runs: int = 50,
    thresholds: dict[str, dict[str, float]] | None = None,
    input_size: Sequence[int] | None = None,
    channels: int | None = None,
    serving_base: str | None = None,
) -> Path:
    """Export a Keras image classifier to every chosen format, with the same contract, model card
    and verification as a tfcnn run; returns the version directory.

    ``test`` ((images, labels) or a dataset of them, uint8 pixels) is what verify compares on;
    ``representative`` (images, default: the test images) calibrates full-integer int8;
    ``normalization`` says what the model expects ('in_graph' for raw pixels, mean/std in pixel
    units, or scale/offset such as {'scale': 1/255}); ``outputs`` whether it returns logits or
    softmax probabilities. ``input_size=(height, width)`` and ``channels`` fix the export size of a
    model built for any image size (and must agree with a model that has a fixed one).
    """
    from tfcnn.export.exporter import export_run, versions
    from tfcnn.export.formats import check_formats
    from tfcnn.export.verify import verify_version

    if outputs not in OUTPUTS:
        raise ExportError(f"outputs = {outputs!r}; choose 'logits' or 'probabilities'")
    geometry = _geometry(model, input_size, channels)
    h, w, c, k = geometry
    labels = [str(l) for l in labels]
    if len(labels) != k:
        raise ExportError(f"{len(labels)} labels given but the model outputs {k} classes")
    chosen = check_formats(formats, "classification")
    mean, std = _normalization(normalization, c)
    x_test, y_test = _images(test, "test", (h, w, c), with_labels=True)
    if y_test.min() < 0 or y_test.max() >= k:
        raise ExportError(f"test labels run from {y_test.min()} to {y_test.max()}; they must be class ids 0..{k - 1}")
    _check_outputs_kind(model, x_test, mean, std, outputs)
    if representative is None:
        x_cal = x_test
        if "tflite_int8" in chosen:
            log.info("export: no representative images given; calibrating int8 on the test images")
    else:
        x_cal, _ = _images(representative, "representative", (h, w, c), with_labels=False)

    root = Path(out)
    name_dir = ensure_dir(root / name)
    existing = versions(name_dir)
    version = version if version is not None else ((existing[-1] + 1) if existing else 1)
    run = Run.create(name_dir / f"reference-{version}")
    data_file = run.root / "reference_data.npz"
    with atomic_path(data_file, suffix=".npz") as tmp:
        np.savez_compressed(tmp, x_calibration=x_cal, x_test=x_test, y_test=y_test.astype(np.int32), class_names=np.asarray(labels))
    cfg = from_dict(
        {
            "name": name,
            "data": {"source": f"reference:{data_file.resolve()}", "val_fraction": 0.0, "seed": 0},
            "export": {
                "name": name, "root": str(root), "formats": list(chosen), "representative_samples": max(1, min(len(x_cal), 300)),
                "threads": threads, "latency_runs": latency_runs, "description": description, "author": author,
                "license": license, "thresholds": dict(thresholds or {}), "serving_base": serving_base,
            },
        }
    )
    run.save_config(cfg)
    from tfcnn.data import bundle_for

    bundle = bundle_for(run)
    run.write(bundle.info)
    # A model trained under mixed precision is exported as its float32 rebuild (bfloat16 ops do not convert).
    ref = _reference_model(float32_model(model), mean, std, outputs, geometry)
    try:
        with atomic_path(run.path("model"), suffix=".keras") as tmp:
            ref.save(tmp)
    except Exception as exc:  # custom layers that Keras cannot serialise
        raise ExportError(
            f"the model could not be saved as .keras ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "register custom layers with @keras.saving.register_keras_serializable() so the export can be re-verified"
        ) from None
    logits = ref.predict(x_test.astype(np.float32), batch_size=256, verbose=0)
    acc = float(np.mean(np.argmax(logits, 1) == y_test))
    run.write(Metrics(model=model.name, params=int(model.count_params()), engine="external", scores={"test_accuracy": acc}))
    log.info("export: %s (%d classes, %dx%dx%d) trained outside tfcnn: Keras test accuracy %.2f%% on %d images",
             model.name, k, h, w, c, 100 * acc, len(y_test))
    vd = export_run(run, formats=list(chosen), name=name, root=root, version=version)
    if verify:
        verify_version(vd, run=run)
    return vd


def load_keras_file(path: Path, imports: Sequence[str] = ()):
    """A .keras file trained anywhere; a custom class Keras cannot find is one line saying how to register it."""
    import importlib
    import re

    import keras

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"model file {str(path)!r} does not exist")
    for module in imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ExportError(f"--import {module}: {exc}") from None
    from tfcnn.models import layers as _layers  # noqa: F401  (tfcnn's own serialisable layers)

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises TypeError/ValueError/zip errors alike
        text = str(exc)
        missing = re.search(r"[Cc]ould not (?:locate|deserialize) (?:class|function) '?([\w.]+)'?", text)
        if missing:
            raise ExportError(
                f"{path}: the model uses the custom class {missing.group(1)!r}, which is not registered in this process; "
                "decorate it with @keras.saving.register_keras_serializable() in a module and pass --import MODULE "
                "(or import it before calling tfcnn.export_model)"
            ) from None
        raise ExportError(f"{path} could not be loaded as a Keras model ({type(exc).__name__}: {text.splitlines()[0][:200] if text else ''})") from None


def read_labels_file(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"labels file {str(path)!r} does not exist; give a text file with one class name per line")
    labels = [l.strip() for l in path.read_text().splitlines() if l.strip()]
    if len(labels) < 2:
        raise ExportError(f"{path} lists {len(labels)} class name(s); a classifier needs at least 2, one per line")
    if len(set(labels)) != len(labels):
        raise ExportError(f"{path} lists a class name twice; each line must be a different class")
    return labels


def export_keras_file(
    model_path: Path,
    *,
    labels_file: Path,
    data: str,
    imports: Sequence[str] = (),
    **kwargs: Any,
) -> Path:
    """`tfcnn export MODEL.keras --labels labels.txt --data SOURCE`: decode SOURCE at the model's
    input size (its test split to verify on, its training split to calibrate int8), put its labels
    in the labels file's order, and :func:`export_model`."""
    from tfcnn.config import DataConfig
    from tfcnn.data import load_data

    model = load_keras_file(model_path, imports)
    labels = read_labels_file(labels_file)
    h, w, c, k = _geometry(model, kwargs.get("input_size"), kwargs.get("channels"))
    bundle = load_data(DataConfig(source=data, image_size=[h, w], channels=c, val_fraction=0.0))
    names = list(bundle.info.class_names)
    x_test, y_test = bundle.arrays["test"]
    x_train, _ = bundle.arrays["train"]
    if names != [str(i) for i in range(len(names))]:  # named classes: map them onto the labels file's order
        if set(names) != set(labels):
            raise ExportError(
                f"--data {data} has classes {names} but {labels_file} lists {labels}; they must name the same classes"
            )
        order = np.asarray([labels.index(n) for n in names])
        y_test = order[y_test]
    elif len(names) > len(labels):
        raise ExportError(f"--data {data} has {len(names)} classes but {labels_file} lists {len(labels)}")
    kwargs.setdefault("name", Path(model_path).stem)
    return export_model(model, labels=labels, test=(x_test, y_test), representative=x_train, **kwargs)
