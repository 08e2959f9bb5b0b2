"""`tfcnn explain`: where a trained model looks, as PNG files, using tf-keras-vis.

Saliency (vanilla and SmoothGrad), Grad-CAM, Grad-CAM++ and Score-CAM are drawn over the input;
activation maximization shows what a class or a filter responds to; the first conv layer's
filters and every conv layer's feature maps show the model's anatomy for one input.

Conventions, so the maps mean what they say:

* tfcnn models take float32 pixels in [0, 255] and end in the Dense "logits" without softmax.
  The class scores tf-keras-vis differentiates are therefore already pre-softmax, so no
  ``ReplaceToLinear`` model modifier is applied (it exists to strip a softmax whose saturation
  flattens gradients). Score-CAM weighs masked inputs by softmax probabilities, which it computes
  from the logits itself, as in the paper.
* Grad-CAM weights the channels of a conv layer's OUTPUT by the spatially averaged gradient of the
  class score with respect to that output (Selvaraju et al., "Grad-CAM", ICCV 2017, eq. 1);
  gradients with respect to the input image would give a saliency map, not Grad-CAM.
* The default layer is the last layer whose output is a feature map larger than 1x1, found by
  walking back from the logits. A 1x1 map (the ``gdconv``/``gdconv_bn`` outputs of compact_cnn's
  global depthwise head, a keepdims pooling) upsamples to a constant, so its Grad-CAM says
  nothing; such a layer is skipped by the walk and refused when named. Any other layer with a
  4-D output larger than 1x1 can be named.
* Every map is returned at input resolution, min-max normalised to [0, 1] per image. A map that
  is constant (max - min within a relative 1e-6 of its magnitude) or not finite carries no
  information; it is returned as zeros, :func:`flat_maps` flags it, and `explain_images` and the
  report say "... map is constant for layer X: nothing to show" instead of drawing a flat image.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfcnn.data.images import load_image
from tfcnn.data.info import DataInfo
from tfcnn.errors import TfcnnError
from tfcnn.models.saved import load_trained_model
from tfcnn.run import Run
from tfcnn.util import keras_verbose, log
from tfcnn.vis.plots import grid_figure, heatmap_figure, save_figure, unit_range

# Relative tolerance under which a raw attribution map counts as constant (see flat_maps).
CONSTANT_RTOL = 1e-6

# Method ids double as file-name parts: <image>_<method>.png
MAP_METHODS = ("saliency", "smoothgrad", "gradcam", "gradcam_plus_plus", "scorecam")
METHODS = MAP_METHODS + ("activation_maximization", "filters", "feature_maps")
METHOD_TITLES = {
    "saliency": "vanilla saliency",
    "smoothgrad": "SmoothGrad",
    "gradcam": "Grad-CAM",
    "gradcam_plus_plus": "Grad-CAM++",
    "scorecam": "Score-CAM",
}
CAM_METHODS = ("gradcam", "gradcam_plus_plus", "scorecam")  # the ones that read a layer
_CONV_TYPES = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Conv2DTranspose,
)


# --------------------------------------------------------------------------- layers


def _output_rank(layer: keras.layers.Layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # shared layer (several outputs) or never called
        return None


def _is_1x1(shape: Sequence[int | None]) -> bool:
    """A 4-D shape whose spatial size is known to be 1x1 (unknown sizes count as larger)."""
    return len(shape) == 4 and shape[1] == 1 and shape[2] == 1


def _output_shape(layer: keras.layers.Layer) -> tuple | None:
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return None


def spatial_layers(model: keras.Model) -> list[str]:
    """Names of the top-level layers whose output is a 4-D feature map larger than 1x1 (candidates for `layer=`)."""
    out = []
    for layer in model.layers:
        shape = _output_shape(layer)
        if not isinstance(layer, keras.layers.InputLayer) and shape is not None and len(shape) == 4 and not _is_1x1(shape):
            out.append(layer.name)
    return out


def conv_layers(model: keras.Model) -> list[str]:
    """Names of the top-level convolution layers (Conv2D, depthwise, separable, transposed)."""
    return [layer.name for layer in model.layers if isinstance(layer, _CONV_TYPES)]


def default_layer(model: keras.Model) -> str:
    """The last feature map larger than 1x1 before the head: walk back from the logits until the
    output is 4-D with more than one spatial position (1x1 maps, e.g. a global depthwise conv head,
    are walked past: their Grad-CAM is a constant)."""
    tensor = model.outputs[0]
    try:
        for _ in range(len(model.layers) + 1):
            layer, node_index, _ = tensor._keras_history
            if isinstance(layer, keras.layers.InputLayer):
                break
            if len(tensor.shape) == 4 and not _is_1x1(tuple(tensor.shape)) and layer in model.layers:
                return layer.name
            parents = layer._inbound_nodes[node_index].input_tensors
            if not parents:
                break
            tensor = parents[0]
    except (AttributeError, IndexError, ValueError):
        pass
    # Fallback: the last layer in topological order with a real spatial map.
    for layer in reversed(model.layers):
        if _output_rank(layer) == 4 and not isinstance(layer, keras.layers.InputLayer):
            shape = layer.output.shape
            if (shape[1] or 2) > 1 or (shape[2] or 2) > 1:
                return layer.name
    raise TfcnnError(
        f"model {model.name!r} has no layer with a 4-D (spatial) output larger than 1x1; there is nothing to explain spatially"
    )


def resolve_layer(model: keras.Model, layer: str | None, *, allow_1x1: bool = False) -> str:
    """The layer to explain: `layer` if it is a 4-D feature map of the model, else one clear error.

    A 1x1 feature map is refused (its Grad-CAM is constant) unless `allow_1x1` (feature maps and
    activation maximization of its filters still mean something).
    """
    if layer is None:
        return default_layer(model)
    choices = spatial_layers(model)
    if layer in choices:
        return layer
    names = {lay.name for lay in model.layers}
    if layer in names:
        shape = _output_shape(model.get_layer(layer))
        if shape is not None and _is_1x1(shape):
            if allow_1x1:
                return layer
            why = (f"layer {layer!r} has a 1x1 spatial output {shape}: its Grad-CAM map is constant, so there is "
                   f"nothing to show")
        else:
            why = f"layer {layer!r} has output shape {shape}, not a 4-D feature map"
    else:
        why = f"model {model.name!r} has no layer named {layer!r}"
    raise TfcnnError(f"{why}; choose one of the conv/feature-map layers larger than 1x1: {', '.join(choices)}")


# --------------------------------------------------------------------------- attribution maps


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """tf-keras-vis feeds inputs as a list and calls model.predict: silence the warning and progress bar."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The structure of `inputs`")
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def _batch(model: keras.Model, images: np.ndarray, class_indices: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    x = np.asarray(images, dtype=np.float32)
    expected = tuple(model.inputs[0].shape[1:])
    if x.ndim == len(expected):
        x = x[None]
    if x.ndim != 4 or any(e is not None and e != s for e, s in zip(expected, x.shape[1:])):
        raise TfcnnError(f"images must be [N, {', '.join(map(str, expected))}] pixel arrays, got shape {x.shape}")
    classes = [int(c) for c in np.atleast_1d(np.asarray(class_indices))]
    if len(classes) == 1 and len(x) > 1:
        classes = classes * len(x)
    if len(classes) != len(x):
        raise TfcnnError(f"give one class index per image: {len(x)} images but {len(classes)} class indices")
    num_classes = int(model.outputs[0].shape[-1])
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise TfcnnError(f"class index {bad[0]} is out of range; the model has {num_classes} classes (0..{num_classes - 1})")
    return x, classes


def _as_maps(result: np.ndarray | list, n: int, hw: tuple[int, int]) -> np.ndarray:
    """Min-max scale each map to [0, 1] ourselves: tf-keras-vis divides by (max - min + 1e-7), which
    flattens the tiny raw maps of weakly trained models to ~0. The tolerance is therefore relative:
    a map whose span is within CONSTANT_RTOL of its magnitude (or that holds NaN/inf) is constant
    and becomes zeros, which :func:`flat_maps` recognises."""
    raw = np.asarray(result, dtype=np.float64).reshape((n,) + hw)
    finite = np.isfinite(raw).all(axis=(1, 2), keepdims=True)
    maps = np.where(finite, raw, 0.0)
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    scale = np.maximum(np.abs(lo), np.abs(hi))
    ok = finite & (span > np.maximum(CONSTANT_RTOL * scale, 1e-30))
    scaled = np.divide(maps - lo, span, out=np.zeros_like(maps), where=ok)
    scaled[~np.broadcast_to(ok, scaled.shape)] = 0.0
    return scaled.astype(np.float32)


def flat_maps(maps: np.ndarray) -> np.ndarray:
    """[N] bools: True where a map (from any function here) is constant or non-finite, i.e. says nothing.

    The maps here are min-max scaled, so an informative one spans exactly [0, 1] and a constant
    one was returned as zeros; anything with a span under one half is flat.
    """
    m = np.asarray(maps, dtype=np.float64)
    m = m.reshape((1,) + m.shape) if m.ndim == 2 else m
    axes = tuple(range(1, m.ndim))
    finite = np.isfinite(m).all(axis=axes)
    span = np.where(finite, np.nan_to_num(m).max(axis=axes) - np.nan_to_num(m).min(axis=axes), 0.0)
    return ~finite | (span < 0.5)


def constant_note(method: str, layer: str | None = None) -> str:
    """The sentence shown instead of a flat map: "Grad-CAM map is constant for layer X: nothing to show"."""
    where = f" for layer {layer}" if layer and method in CAM_METHODS else ""
    return f"{METHOD_TITLES.get(method, method)} map is constant{where}: nothing to show"


def saliency(
    model: keras.Model,
    images: np.ndarray,
    class_indices: Sequence[int],
    *,
    smooth_samples: int = 0,
    smooth_noise: float = 0.2,
) -> np.ndarray:
    """|d logit / d pixel| (max over colour channels), [N, H, W] in [0, 1]; SmoothGrad when smooth_samples > 0.

    SmoothGrad averages the gradients of `smooth_samples` copies with Gaussian noise of
    `smooth_noise` x (max - min) of each image added, which removes most of the speckle.
    """
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.utils.scores import CategoricalScore

    x, classes = _batch(model, images, class_indices)
    with _quiet():
        maps = Saliency(model)(
            CategoricalScore(classes), x, smooth_samples=smooth_samples, smooth_noise=smooth_noise, normalize_map=False
        )
    return _as_maps(maps, len(x), x.shape[1:3])


def _cam(kind: str, model: keras.Model, images: np.ndarray, class_indices: Sequence[int], layer: str | None, **kw) -> np.ndarray:
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.scores import CategoricalScore

    x, classes = _batch(model, images, class_indices)
    name = resolve_layer(model, layer)
    cls = {"gradcam": Gradcam, "gradcam_plus_plus": GradcamPlusPlus, "scorecam": Scorecam}[kind]
    with _quiet():
        maps = cls(model)(
            CategoricalScore(classes), x, penultimate_layer=name, seek_penultimate_conv_layer=False,
            normalize_cam=False, **kw
        )
    return _as_maps(maps, len(x), x.shape[1:3])


def gradcam(model: keras.Model, images: np.ndarray, class_indices: Sequence[int], layer: str | None = None) -> np.ndarray:
    """Grad-CAM heatmaps [N, H, W] in [0, 1] at input resolution (gradients w.r.t. the conv OUTPUT)."""
    return _cam("gradcam", model, images, class_indices, layer)


def gradcam_plus_plus(
    model: keras.Model, images: np.ndarray, class_indices: Sequence[int], layer: str | None = None
) -> np.ndarray:
    """Grad-CAM++ heatmaps [N, H, W] in [0, 1]: higher-order gradient weights, better with several objects."""
    return _cam("gradcam_plus_plus", model, images, class_indices, layer)


def scorecam(
    model: keras.Model,
    images: np.ndarray,
    class_indices: Sequence[int],
    layer: str | None = None,
    *,
    max_n: int | None = 64,
    batch_size: int = 64,
) -> np.ndarray:
    """Score-CAM heatmaps [N, H, W] in [0, 1]: gradient-free, one forward pass per channel of `layer`.

    With `max_n` only the max_n channels of highest spatial variance are used (Faster Score-CAM);
    None uses every channel.
    """
    name = resolve_layer(model, layer)
    channels = int(model.get_layer(name).output.shape[-1])
    n = None if max_n is None or max_n >= channels else max(1, int(max_n))
    return _cam("scorecam", model, images, class_indices, name, max_N=n, batch_size=batch_size)


def attribution_maps(
    method: str,
    model: keras.Model,
    images: np.ndarray,
    class_indices: Sequence[int],
    layer: str | None = None,
    *,
    smooth_samples: int = 20,
    scorecam_max_n: int | None = 64,
) -> np.ndarray:
    """Dispatch by method id (one of MAP_METHODS)."""
    if method == "saliency":
        return saliency(model, images, class_indices)
    if method == "smoothgrad":
        return saliency(model, images, class_indices, smooth_samples=max(1, smooth_samples))
    if method == "gradcam":
        return gradcam(model, images, class_indices, layer)
    if method == "gradcam_plus_plus":
        return gradcam_plus_plus(model, images, class_indices, layer)
    if method == "scorecam":
        return scorecam(model, images, class_indices, layer, max_n=scorecam_max_n)
    raise TfcnnError(f"unknown attribution method {method!r}; choose one of {', '.join(MAP_METHODS)}")


# --------------------------------------------------------------------------- anatomy


def activation_maximization(
    model: keras.Model,
    *,
    classes: Sequence[int] | None = None,
    layer: str | None = None,
    filters: Sequence[int] | None = None,
    steps: int = 100,
    learning_rate: float = 2.0,
    tv_weight: float = 0.01,
    jitter: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """Inputs [K, H, W, C] in pixel units (0..255) that maximise each class logit, or each filter of `layer`.

    Pass `classes` for class logits, or `layer` and `filters` for the spatial mean of those
    channels. Starts from mid-gray noise and runs Adam on the raw pixels with a small total-variation
    penalty, clipped to [0, 255]. tf-keras-vis's defaults (RMSprop with learning rate 1, jitter,
    L1 norm) are tuned for ImageNet VGG16: on tfcnn's small models, whose logits move little per
    pixel, they freeze the image at gray or a checkerboard, and jitter fights the position-specific
    features small images have. `jitter` > 0 re-enables random shifts of up to that many pixels.
    """
    from tf_keras_vis.activation_maximization import ActivationMaximization
    from tf_keras_vis.activation_maximization.input_modifiers import Jitter
    from tf_keras_vis.activation_maximization.regularizers import TotalVariation2D
    from tf_keras_vis.utils.scores import CategoricalScore

    if (classes is None) == (filters is None):
        raise TfcnnError("activation maximization needs either classes or (layer and) filters, not both or neither")
    h, w, c = (int(d) for d in model.inputs[0].shape[1:])
    if classes is not None:
        targets = [int(k) for k in classes]
        num_classes = int(model.outputs[0].shape[-1])
        bad = [k for k in targets if not 0 <= k < num_classes]
        if bad:
            raise TfcnnError(f"class {bad[0]} is out of range; the model has {num_classes} classes")
        target_model, score = model, CategoricalScore(targets)
    else:
        spatial = set(spatial_layers(model))
        convs = [n for n in conv_layers(model) if n in spatial]  # a 1x1 head conv is no default
        name = layer if layer is not None else (convs or [default_layer(model)])[-1]
        name = resolve_layer(model, name, allow_1x1=layer is not None)
        target_model = keras.Model(model.inputs[0], model.get_layer(name).output)
        channels = int(target_model.outputs[0].shape[-1])
        targets = [int(f) for f in filters]
        bad = [f for f in targets if not 0 <= f < channels]
        if bad:
            raise TfcnnError(f"filter {bad[0]} is out of range; layer {name!r} has {channels} channels")

        def score(output: tf.Tensor) -> tf.Tensor:
            return tf.stack([tf.reduce_mean(output[i, ..., f]) for i, f in enumerate(targets)])

    rng = np.random.default_rng(seed)
    start = tf.constant(rng.uniform(96.0, 160.0, size=(len(targets), h, w, c)).astype(np.float32))
    with _quiet():
        result = ActivationMaximization(target_model)(
            score,
            seed_input=start,
            input_range=(0.0, 255.0),
            input_modifiers=[Jitter(jitter=jitter)] if jitter > 0 else [],
            regularizers=[TotalVariation2D(weight=tv_weight)] if tv_weight > 0 else [],
            steps=steps,
            optimizer=keras.optimizers.Adam(learning_rate),
        )
    return np.asarray(result, dtype=np.float32)


def first_conv_filters(model: keras.Model) -> tuple[str, list[np.ndarray]]:
    """The first conv layer's kernels as tiles in [0, 1]: RGB when it reads 3 channels, else gray per input channel."""
    convs = conv_layers(model)
    if not convs:
        raise TfcnnError(f"model {model.name!r} has no top-level Conv2D/DepthwiseConv2D/SeparableConv2D layer")
    layer = model.get_layer(convs[0])
    kernel = np.asarray(keras.ops.convert_to_numpy(layer.get_weights()[0]), dtype=np.float32)
    if isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
        kh, kw, cin, mult = kernel.shape  # one filter per input channel (times the multiplier)
        kernel = kernel.reshape(kh, kw, 1, cin * mult)
    if isinstance(layer, keras.layers.Conv2DTranspose):
        kernel = np.transpose(kernel, (0, 1, 3, 2))  # (kh, kw, out, in) -> (kh, kw, in, out)
    tiles = []
    for f in range(kernel.shape[-1]):
        k = kernel[..., f]
        tiles.append(unit_range(k) if k.shape[-1] == 3 else unit_range(k.mean(axis=-1)))
    return layer.name, tiles


def feature_maps(model: keras.Model, image: np.ndarray, layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Each named layer's output [h, w, c] for one image (default: every conv layer larger than 1x1,
    else every such 4-D layer)."""
    spatial = spatial_layers(model)
    names = list(layers) if layers is not None else ([n for n in conv_layers(model) if n in spatial] or spatial)
    for name in names:
        resolve_layer(model, name, allow_1x1=True)
    if not names:
        return {}
    probe = keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])
    x, _ = _batch(model, np.asarray(image)[None] if np.ndim(image) == 3 else image, [0])
    outs = probe(x[:1], training=False)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    return {n: np.asarray(keras.ops.convert_to_numpy(o))[0] for n, o in zip(names, outs)}


# --------------------------------------------------------------------------- explain_images


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "image"


def _stems(images: Sequence[Path]) -> list[str]:
    stems = [_safe(Path(p).stem) for p in images]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{i:02d}_{s}" for i, s in enumerate(stems)]


def _load_images(paths: Sequence[Path], shape: tuple[int, int, int]) -> np.ndarray:
    h, w, c = shape
    batch = []
    for path in paths:
        if not Path(path).is_file():
            raise TfcnnError(f"image {str(path)!r} does not exist")
        img = np.asarray(load_image(Path(path), size=(h, w), channels=c))
        if img.ndim == 2:
            img = img[..., None]
        batch.append(img)
    return np.stack(batch).astype(np.uint8)


def _label(class_names: Sequence[str], k: int) -> str:
    return class_names[k] if 0 <= k < len(class_names) else f"class {k}"


class Explained(list):
    """The PNG paths `explain_images` wrote (a list), plus `.notes`: one line per map not drawn
    because it was constant ("<image>: Grad-CAM map is constant for layer X: nothing to show")."""

    def __init__(self, paths: Sequence[Path] = (), notes: Sequence[str] = ()):
        super().__init__(paths)
        self.notes: list[str] = list(notes)


def explain_images(
    run_dir: Path,
    images: list[Path],
    *,
    layer: str | None = None,
    out_dir: Path | None = None,
    methods: list[str] | None = None,
    classes: list[int] | None = None,
    filters: list[int] | None = None,
    smooth_samples: int = 20,
    scorecam_max_n: int | None = 64,
    am_steps: int = 100,
    max_tiles: int = 64,
) -> Explained:
    """Write explanation PNGs for image files into out_dir (default the run's explain directory); return their paths.

    Per image: `<image>_<method>.png` for each attribution method (the predicted class, or each of
    `classes`, overlaid on the input) and `<image>_feature_maps_<layer>.png` per conv layer.
    Per model: `model_filters_<layer>.png` (first conv layer), `model_activation_maximization_classes.png`
    and `model_activation_maximization_<layer>.png` (`filters` of the explained layer's conv, default the first 8).

    A constant map is never drawn as a flat image: its panel says "... map is constant for layer X:
    nothing to show" instead, and when every target's map of an image is constant no PNG is written
    for that method. Each such case is logged as a warning and listed in the result's `.notes`.
    """
    run = Run.open(run_dir, need=("data", "model"))
    chosen = list(methods) if methods is not None else list(METHODS)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise TfcnnError(f"unknown explain method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if not images:
        raise TfcnnError("give at least one image file to explain")
    info = run.read(DataInfo)
    model = load_trained_model(run)
    name = resolve_layer(model, layer)  # fail on a wrong --layer before any work
    names = list(info.class_names)
    if classes is not None:
        bad = [k for k in classes if not 0 <= int(k) < len(names)]
        if bad:
            raise TfcnnError(f"class {bad[0]} is out of range; this run has {len(names)} classes (0..{len(names) - 1})")
    out = Path(out_dir) if out_dir is not None else run.path("explain")
    x = _load_images(images, tuple(info.input_shape))
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(model(x.astype(np.float32), training=False), axis=-1))
    preds = probs.argmax(axis=-1)
    stems = _stems(images)
    written = Explained()

    map_methods = [m for m in chosen if m in MAP_METHODS]
    steps = len(images) * (len(map_methods) + ("feature_maps" in chosen)) + sum(
        m in chosen for m in ("filters", "activation_maximization")
    )
    log.info(f"explain: {steps} figures for {len(images)} image(s) into {out}")
    bar = keras.utils.Progbar(steps, unit_name="figure", verbose=keras_verbose())

    for i, path in enumerate(images):
        targets = [int(k) for k in classes] if classes else [int(preds[i])]
        pred_title = f"{Path(path).name}\npredicted {_label(names, preds[i])} ({100 * probs[i, preds[i]]:.1f}%)"
        for method in map_methods:
            batch = np.repeat(x[i : i + 1], len(targets), axis=0)
            maps = attribution_maps(
                method, model, batch, targets, name, smooth_samples=smooth_samples, scorecam_max_n=scorecam_max_n
            )
            where = f" @ {name}" if method in CAM_METHODS else ""
            titles = [f"{METHOD_TITLES[method]}{where}\n{_label(names, k)} ({100 * probs[i, k]:.1f}%)" for k in targets]
            flat = flat_maps(maps)
            why = constant_note(method, name)
            for k, is_flat in zip(targets, flat):
                if is_flat:
                    line = f"{Path(path).name}: {why} (class {_label(names, k)})"
                    written.notes.append(line)
                    log.warning(f"explain: {line}")
            target = out / f"{stems[i]}_{method}.png"
            if flat.all():
                target.unlink(missing_ok=True)  # never leave an older, misleading picture behind
            else:
                fig = heatmap_figure(
                    x[i], [None if f else m for m, f in zip(maps, flat)], titles, input_title=pred_title,
                    suptitle=f"{Path(path).name}: {METHOD_TITLES[method]}{where}", missing=f"not available:\n{why}",
                )
                written.append(save_figure(fig, target))
            bar.add(1)
        if "feature_maps" in chosen:
            for lname, fmap in feature_maps(model, x[i]).items():
                n = min(fmap.shape[-1], max_tiles)
                fig = grid_figure(
                    [unit_range(fmap[..., c]) for c in range(n)], [f"ch {c}" for c in range(n)],
                    suptitle=f"{Path(path).name}: feature maps of {lname} "
                    f"({'x'.join(map(str, fmap.shape))}{', first ' + str(n) if n < fmap.shape[-1] else ''})",
                )
                written.append(save_figure(fig, out / f"{stems[i]}_feature_maps_{_safe(lname)}.png"))
            bar.add(1)

    if "filters" in chosen:
        lname, tiles = first_conv_filters(model)
        tiles = tiles[:max_tiles]
        fig = grid_figure(tiles, [f"filter {f}" for f in range(len(tiles))], cmap="gray",
                          suptitle=f"first conv layer {lname}: {len(tiles)} filters (min-max scaled each)")
        written.append(save_figure(fig, out / f"model_filters_{_safe(lname)}.png"))
        bar.add(1)

    if "activation_maximization" in chosen:
        am_classes = [int(k) for k in classes] if classes else list(range(min(len(names), 16)))
        inputs = activation_maximization(model, classes=am_classes, steps=am_steps)
        fig = grid_figure(
            [im.astype(np.uint8) for im in inputs], [_label(names, k) for k in am_classes],
            suptitle="activation maximization: inputs that maximise each class logit",
        )
        written.append(save_figure(fig, out / "model_activation_maximization_classes.png"))
        conv_name = _conv_for(model, name)
        channels = int(model.get_layer(conv_name).output.shape[-1])
        am_filters = [int(f) for f in filters] if filters is not None else list(range(min(channels, 8)))
        inputs = activation_maximization(model, layer=conv_name, filters=am_filters, steps=am_steps)
        fig = grid_figure(
            [im.astype(np.uint8) for im in inputs], [f"filter {f}" for f in am_filters],
            suptitle=f"activation maximization: inputs that maximise filters of {conv_name}",
        )
        written.append(save_figure(fig, out / f"model_activation_maximization_{_safe(conv_name)}.png"))
        bar.add(1)
    return written


def _conv_for(model: keras.Model, layer: str) -> str:
    """The conv layer whose filters stand behind `layer`: itself if a conv, else the last conv at or before it."""
    convs = set(conv_layers(model))
    last = None
    for lay in model.layers:
        if lay.name in convs:
            last = lay.name
        if lay.name == layer:
            break
    return last if last is not None else layer
