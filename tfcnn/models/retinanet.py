"""retinanet: a one-stage detector (Lin et al. 2017, "Focal Loss for Dense Object Detection") on
any registered classifier's body, with a feature pyramid (Lin et al. 2017, "Feature Pyramid
Networks") and one class/box head shared by every level.

Why this design, for small images on a CPU:

* **Any backbone.** The backbone is a registered classifier's *body* (``options.backbone``, with
  its own ``options.backbone_options``), built on the frame's normalised image exactly as it
  would be for classification, so every architecture and its option checks are reused and a
  pretrained EfficientNet-Lite0 can start from ImageNet weights. Its pooling head is simply left
  out: a functional model contains only the layers between its input and outputs.
* **Feature maps found by stride, not by layer name.** :func:`feature_maps` walks the built
  graph back from the body's output and keeps the tensors *every* path from input to output goes
  through (the stage outputs; a residual branch, a shortcut or a squeeze-and-excitation gate is
  bypassed by another path and so never qualifies). ``C_l``, the map at stride ``2**l``, is the
  last of those whose spatial size is ``ceil(H / 2**l) x ceil(W / 2**l)``, what "same"-padded
  stride-2 layers give and what :func:`tfcnn.models.anchors.grid_sizes` assumes. A nested
  functional backbone (the ``keras.applications`` ones) is searched the same way inside.
* **Deeper levels on demand.** Levels beyond the backbone's deepest map come from extra stride-2
  3x3 convolutions (RetinaNet's P6/P7; here each is followed by the activation and then treated
  like a backbone map), so any level list works on any backbone.
* **FPN.** 1x1 lateral convs to ``fpn_channels``, then top-down: nearest-neighbour upsampling of
  the coarser map (cropped when the finer map has an odd size: ``ceil(13/2) = 7`` upsamples to 14)
  added to the lateral, then a 3x3 smoothing conv. Coarse levels carry semantics, fine levels
  resolution; the sum gives every level both.
* **Shared heads.** The same Keras layers (``head_convs`` 3x3 conv + activation, then a class and
  a box conv) run on every level, as in RetinaNet: objects of any size are the same problem at a
  different scale, and the head's weights do not grow with the number of levels. No BatchNorm in
  the head (statistics shared across levels of different sizes would mix them).
* **Prior-probability init.** The class conv's bias starts at ``-log((1 - p) / p)``, so every
  anchor first predicts foreground with probability ``p`` (0.01): with ~10^4 background anchors
  per image, a 0.5 start would make the focal loss' first steps all background and unstable.

Output: one float32 tensor ``detections`` ``[B, A, 4 + K]``, per anchor 4 box offsets then K
class logits (sigmoid per class, no background logit), anchors in the order of
:func:`tfcnn.models.anchors.generate_anchors`; ``A == anchors.count(anchor_spec(cfg), H, W)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError, TfcnnError
from tfcnn.models import pretrained, warm_start
from tfcnn.models.lazy import keras
from tfcnn.models.registry import Normalization, get_builder, register, regularizer, resolve_options
from tfcnn.util import log

if TYPE_CHECKING:  # tfcnn.models.anchors loads numpy, which registering the builders must not
    from tfcnn.models.anchors import AnchorSpec

NAME = "retinanet"
BACKBONE_OPTIONS = {
    "backbone": "compact_cnn",  # any registered classifier (model.name of a classifier)
    "backbone_options": {},  # that classifier's own model.options
    # "none": random init; "imagenet" or a .weights.h5 path: a pretrained backbone's weights
    # (efficientnet_lite0); "<file>.keras": a classifier tfcnn trained with the same backbone
    # options (runs/<name>/model.keras); either copied by layer name into the backbone part
    "backbone_weights": "none",
}
OPTIONS = {
    **BACKBONE_OPTIONS,
    "levels": [3, 4, 5],
    "anchor_size": 4.0,
    "anchor_scales": [1.0, 1.2599, 1.5874],
    "anchor_ratios": [0.5, 1.0, 2.0],
    "fpn_channels": 64,
    "head_convs": 2,
    "head_channels": 64,
    "prior_probability": 0.01,
}
MAX_LEVEL = 12
KERAS_SUFFIX = warm_start.KERAS_SUFFIX  # backbone_weights from a classifier tfcnn trained (runs/<name>/model.keras)
BACKBONE_WEIGHTS = "model.options.backbone_weights"


# --------------------------------------------------------------------------- options


def backbone_config(cfg: ModelConfig) -> ModelConfig:
    """The backbone's own ModelConfig: its name and resolved ``backbone_options``, with the outer
    config's width/depth/activation/batch_norm/se/block/l2 (a pretrained backbone keeps its fixed
    architecture: only l2 and the activation pass), no dropout (the detector's head has its own),
    and ``input_size = 0`` where the backbone resizes (its maps must keep the image's strides)."""
    name = cfg.options["backbone"]
    options = dict(cfg.options["backbone_options"])
    builder = get_builder(name)
    if "input_size" in builder.options and "input_size" not in options:
        options["input_size"] = 0
    if pretrained.is_pretrained(name):
        base = ModelConfig(name=name, activation=cfg.activation, l2=cfg.l2, weights="none", options=options)
    else:
        base = dataclasses.replace(cfg, name=name, dropout=0.0, weights=None, options=options)
    try:
        return resolve_options(base)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("model.options.", "model.options.backbone_options.", 1)) from None


def check_backbone(cfg: ModelConfig) -> None:
    """Refuse (one ConfigError line) a backbone that is not a registered classifier, typos in its
    backbone_options, and a backbone_weights choice it cannot take. Builds nothing."""
    name = cfg.options["backbone"]
    if name not in _classifiers():
        raise ConfigError(
            f"model.options.backbone = {name!r} is not a registered classifier; choose one of {', '.join(_classifiers())}"
        )
    backbone_config(cfg)
    weights = cfg.options["backbone_weights"]
    if weights != "none" and not weights.endswith(KERAS_SUFFIX):
        source = pretrained.SOURCES[name] if pretrained.is_pretrained(name) else None
        if source is None or source.build_reference is None:
            loadable = sorted(n for n in pretrained.SOURCES if pretrained.SOURCES[n].build_reference is not None)
            raise ConfigError(
                f"model.options.backbone_weights = {weights!r} needs a backbone with a weights file "
                f"({', '.join(loadable) or 'none registered'}), not {name}; use 'none' or a {KERAS_SUFFIX} "
                f"classifier trained by tfcnn (runs/<name>/model.keras)"
            )
        if weights != "imagenet" and not weights.endswith(pretrained.WEIGHTS_SUFFIX):
            raise ConfigError(
                f"model.options.backbone_weights = {weights!r}; use 'none', 'imagenet', a path to a {pretrained.WEIGHTS_SUFFIX} "
                f"file or a {KERAS_SUFFIX} classifier trained by tfcnn"
            )


def _classifiers() -> list[str]:
    from tfcnn.models.registry import MODELS

    return sorted(n for n in MODELS if MODELS[n].head)


def _positive_numbers(cfg: ModelConfig, key: str) -> tuple[float, ...]:
    values = cfg.options[key]
    if not values or any(float(v) <= 0 for v in values):
        raise ConfigError(f"model.options.{key} = {values!r} must be a non-empty list of positive numbers")
    return tuple(float(v) for v in values)


def _positive_int(cfg: ModelConfig, key: str, minimum: int = 1) -> int:
    value = cfg.options[key]
    if value < minimum:
        raise ConfigError(f"model.options.{key} = {value!r} must be an integer >= {minimum}")
    return int(value)


def check_detector(cfg: ModelConfig) -> None:
    """Every retinanet option that its kind alone does not check (the registry's ``check`` hook)."""
    _anchor_values(cfg)
    _positive_int(cfg, "fpn_channels")
    _positive_int(cfg, "head_channels")
    _positive_int(cfg, "head_convs", 0)
    p = float(cfg.options["prior_probability"])
    if not 0.0 < p < 1.0:
        raise ConfigError(f"model.options.prior_probability = {p} must be in (0, 1), e.g. 0.01")
    check_backbone(cfg)


def _anchor_values(cfg: ModelConfig) -> tuple[tuple[int, ...], float, tuple[float, ...], tuple[float, ...]]:
    """(levels, size, scales, ratios) from resolved options, checked; no numpy needed."""
    levels = cfg.options["levels"]
    if not levels or any(not 0 <= int(v) <= MAX_LEVEL for v in levels) or list(levels) != sorted(set(levels)):
        raise ConfigError(
            f"model.options.levels = {levels!r} must be distinct increasing integers in 0..{MAX_LEVEL}, e.g. [3, 4, 5]"
        )
    size = float(cfg.options["anchor_size"])
    if size <= 0:
        raise ConfigError(f"model.options.anchor_size = {size!r} must be a positive number (strides), e.g. 4.0")
    scales = _positive_numbers(cfg, "anchor_scales")
    ratios = _positive_numbers(cfg, "anchor_ratios")
    return tuple(int(v) for v in levels), size, scales, ratios


def anchor_spec(cfg: ModelConfig) -> AnchorSpec:
    """The anchors a retinanet built from `cfg` predicts offsets from (the task makes the same);
    an unresolved config (options missing) is resolved first."""
    from tfcnn.models.anchors import AnchorSpec

    if not cfg.options or "levels" not in cfg.options:
        cfg = resolve_options(dataclasses.replace(cfg, name=NAME))
    levels, size, scales, ratios = _anchor_values(cfg)
    return AnchorSpec(levels=levels, size=size, scales=scales, ratios=ratios)


def backbone_normalization(cfg: ModelConfig) -> Normalization | None:
    """The frame's pixel normalisation: the backbone's own when it has a fixed one (pretrained),
    or the classifier's when the backbone starts from a tfcnn classifier's .keras (its features
    were learned on those statistics, not on this data's)."""
    if str(cfg.options.get("backbone_weights", "")).endswith(KERAS_SUFFIX):
        return warm_start.classifier_normalization(cfg.options["backbone_weights"], BACKBONE_WEIGHTS)
    builder = get_builder(cfg.options["backbone"])
    fixed = builder.normalization
    return fixed(backbone_config(cfg)) if callable(fixed) else fixed


# --------------------------------------------------------------------------- the backbone's maps


def _producer(t: Any) -> tuple[Any, Any]:
    """(operation, node) that made KerasTensor `t`."""
    op, node_index, _ = t._keras_history
    return op, op._inbound_nodes[node_index]


def _cut_tensors(start: Any, end: Any) -> list[Any]:
    """Tensors between `start` and `end` (inclusive) that every path from one to the other passes
    through, in topological order. A tensor at topological position p is such a cut iff no edge
    jumps over it (no producer input before p feeding an output after p)."""
    order: list[Any] = []
    seen: set[int] = set()
    edges: list[tuple[int, int]] = []  # (input tensor id, output tensor id)
    stack: list[tuple[Any, bool]] = [(end, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        if t is start:
            continue
        _, node = _producer(t)
        if node.is_input:
            raise TfcnnError("the backbone's output does not depend on the normalised image")
        for inp in node.input_tensors:
            edges.append((id(inp), id(t)))
            if id(inp) not in seen:
                stack.append((inp, False))
    pos = {id(t): i for i, t in enumerate(order)}
    reach = [0] * (len(order) + 1)  # reach[p]: furthest output fed by an input at position < p
    for a, b in edges:
        pa, pb = pos[a], pos[b]
        reach[pa + 1] = max(reach[pa + 1], pb)
    furthest = 0
    cuts = []
    for p, t in enumerate(order):
        furthest = max(furthest, reach[p])
        if furthest <= p:
            cuts.append(t)
    return cuts


def feature_maps(start: Any, end: Any) -> list[Any]:
    """The rank-4 tensors every path from `start` to `end` goes through, in order, with a nested
    functional model on that path (a keras.applications backbone) opened up: its own cut maps are
    taken out by a model of the same layers, named like it, called on its input instead."""
    maps: list[Any] = []
    for t in _cut_tensors(start, end):
        if t is not start:
            op, node = _producer(t)
            if isinstance(op, keras.Model) and len(node.input_tensors) == 1 and len(op.inputs) == 1:
                inner = [m for m in feature_maps(op.inputs[0], op.outputs[0]) if m is not op.inputs[0]]
                if inner:
                    extractor = keras.Model(op.inputs, inner, name=op.name)
                    outs = extractor(node.input_tensors[0])
                    maps.extend(outs if isinstance(outs, (list, tuple)) else [outs])
                    continue
        if len(t.shape) == 4:
            maps.append(t)
    return maps


def backbone_maps(
    x: Any, cfg: ModelConfig, levels: tuple[int, ...], what: str = "model.options.levels"
) -> dict[int, Any]:
    """Level -> feature map at stride ``2**level`` for every level in `levels`, from the backbone
    body built on `x` (see the module docstring), plus extra stride-2 convs past its deepest map."""
    h, w = int(x.shape[1]), int(x.shape[2])
    for level in levels:
        if 2**level > min(h, w):
            raise ConfigError(
                f"{what} = {list(levels)}: level {level} (stride {2**level}) needs at least "
                f"{2**level}x{2**level} pixels, the input is {h}x{w}; use lower levels or larger images"
            )
    bcfg = backbone_config(cfg)
    out = get_builder(bcfg.name).body(x, bcfg)
    maps = feature_maps(x, out)
    found: dict[int, Any] = {}
    for level in range(0, max(levels) + 1):
        if 2**level > min(h, w):
            break
        size = (math.ceil(h / 2**level), math.ceil(w / 2**level))
        matches = [m for m in maps if tuple(m.shape[1:3]) == size and m is not x]
        if matches:
            found[level] = matches[-1]
    if not found:
        raise ConfigError(
            f"{what} = {list(levels)}: backbone {bcfg.name} has no feature map at any stride 2**l of the "
            f"{h}x{w} input (does it resize? set model.options.backbone_options.input_size = 0)"
        )
    deepest = max(found)
    result: dict[int, Any] = {}
    for level in levels:
        if level in found:
            result[level] = found[level]
        elif level < deepest:
            have = ", ".join(str(2**lv) for lv in sorted(found))
            raise ConfigError(
                f"{what} = {list(levels)}: backbone {bcfg.name} has no feature map at stride {2**level} "
                f"of the {h}x{w} input (it has strides {have}); choose levels among those or deeper"
            )
    prev = found[deepest]
    for level in range(deepest + 1, max(levels) + 1):
        prev = keras.layers.Conv2D(
            int(cfg.options.get("fpn_channels", 64)), 3, strides=2, padding="same",
            kernel_regularizer=regularizer(cfg), name=f"extra{level}_conv",
        )(prev)
        prev = keras.layers.Activation(cfg.activation, name=f"extra{level}_act")(prev)
        if level in levels:
            result[level] = prev
    return result


# --------------------------------------------------------------------------- FPN and heads


def fpn(maps: dict[int, Any], cfg: ModelConfig) -> dict[int, Any]:
    """Level -> P_level: lateral 1x1, top-down nearest upsampling (+ crop) and add, 3x3 smoothing."""
    channels = int(cfg.options["fpn_channels"])
    reg = regularizer(cfg)
    levels = sorted(maps)
    merged: dict[int, Any] = {}
    above: Any = None
    above_level = 0
    for level in reversed(levels):
        lateral = keras.layers.Conv2D(channels, 1, kernel_regularizer=reg, name=f"fpn_lateral{level}")(maps[level])
        if above is not None:
            factor = 2 ** (above_level - level)
            up = keras.layers.UpSampling2D(factor, interpolation="nearest", name=f"fpn_up{level}")(above)
            dh, dw = int(up.shape[1]) - int(lateral.shape[1]), int(up.shape[2]) - int(lateral.shape[2])
            if dh or dw:
                up = keras.layers.Cropping2D(((0, dh), (0, dw)), name=f"fpn_crop{level}")(up)
            lateral = keras.layers.Add(name=f"fpn_add{level}")([lateral, up])
        merged[level] = lateral
        above, above_level = lateral, level
    return {
        level: keras.layers.Conv2D(channels, 3, padding="same", kernel_regularizer=reg, name=f"fpn_smooth{level}")(merged[level])
        for level in levels
    }


def prior_bias(p: float) -> float:
    """The class logit bias whose sigmoid is `p`: ``-log((1 - p) / p)``."""
    return -math.log((1.0 - p) / p)


def detection_head(pyramid: dict[int, Any], cfg: ModelConfig, num_classes: int, per_location: int) -> Any:
    """The shared class and box subnets on every level, flattened and joined into ``detections``."""
    convs = int(cfg.options["head_convs"])
    channels = int(cfg.options["head_channels"])
    reg = regularizer(cfg)
    init = keras.initializers.RandomNormal(stddev=0.01)  # RetinaNet's head init

    def subnet(prefix: str, filters: int, bias: float) -> list[Any]:
        layers = []
        for i in range(1, convs + 1):
            layers.append(keras.layers.Conv2D(channels, 3, padding="same", kernel_initializer=init,
                                              kernel_regularizer=reg, name=f"{prefix}_conv{i}"))
            layers.append(keras.layers.Activation(cfg.activation, name=f"{prefix}_act{i}"))
        layers.append(keras.layers.Conv2D(filters, 3, padding="same", kernel_initializer=init,
                                          bias_initializer=keras.initializers.Constant(bias),
                                          kernel_regularizer=reg, name=f"{prefix}_out"))
        return layers

    class_net = subnet("class", num_classes * per_location, prior_bias(float(cfg.options["prior_probability"])))
    box_net = subnet("box", 4 * per_location, 0.0)
    boxes, classes = [], []
    for level, p in sorted(pyramid.items()):
        c, b = p, p
        for layer in class_net:
            c = layer(c)
        for layer in box_net:
            b = layer(b)
        classes.append(keras.layers.Reshape((-1, num_classes), name=f"class_flat{level}")(c))
        boxes.append(keras.layers.Reshape((-1, 4), name=f"box_flat{level}")(b))
    if len(pyramid) > 1:
        box = keras.layers.Concatenate(axis=1, dtype="float32", name="boxes")(boxes)
        cls = keras.layers.Concatenate(axis=1, dtype="float32", name="classes")(classes)
    else:
        box = keras.layers.Activation("linear", dtype="float32", name="boxes")(boxes[0])
        cls = keras.layers.Activation("linear", dtype="float32", name="classes")(classes[0])
    return keras.layers.Concatenate(axis=-1, dtype="float32", name="detections")([box, cls])


# --------------------------------------------------------------------------- weights and registration


def load_backbone_weights(model: Any, cfg: ModelConfig) -> None:
    """``backbone_weights`` != "none": fill the backbone's layers from the pretrained file.

    The file is loaded into the backbone's reference architecture (Keras checks every shape
    there), then each reference layer that the detector contains (same name) is copied; layers
    past the deepest map used (e.g. Lite0's 1280-channel head at levels [3, 4]) are not in the
    detector and are skipped. The detector's own layers keep their initialisation.
    """
    choice = cfg.options["backbone_weights"]
    if choice == "none":
        return
    if choice.endswith(KERAS_SUFFIX):
        copy_from_classifier(model, cfg, choice)
        return
    bcfg = dataclasses.replace(backbone_config(cfg), weights=choice)
    path = pretrained.resolve_file(bcfg)
    if path is None:
        return
    source = pretrained.SOURCES[bcfg.name]
    reference = source.build_reference()
    pretrained.load_weights_file(reference, path, bcfg.name, "use one written by `tfcnn weights NAME` or 'none'")
    present = {layer.name: layer for layer in warm_start.all_layers(model)}
    copied = 0
    for layer in reference.layers:
        if layer.weights and layer.name in present and layer.name != "logits":
            present[layer.name].set_weights(layer.get_weights())
            copied += 1
    if copied == 0:
        raise TfcnnError(f"no layer of {path} matches the {bcfg.name} backbone of this {cfg.name}")
    log.info("model: %s backbone %s weights from %s (%d layers)", cfg.name, bcfg.name, path, copied)


def copy_from_classifier(model: Any, cfg: ModelConfig, path: str) -> None:
    """``backbone_weights = "<classifier>.keras"``: start the backbone from a classifier tfcnn
    trained with the same backbone options (transfer from your own data, e.g. Fashion-MNIST items
    at 28x28 before scenes of them: classifying a small item costs far less than a whole scene).

    Every layer of the classifier with weights whose name the model also has is copied (its
    body); its head (``logits``, a gdconv head) has no namesake here and stays out. Its
    ``normalize`` statistics are the frame's (:func:`backbone_normalization`); see
    :mod:`tfcnn.models.warm_start` for the rules.
    """
    copied = warm_start.copy_layers(model, path, BACKBONE_WEIGHTS, hint="give backbone_options the classifier's own model.options")
    if not copied:
        raise ConfigError(
            f"{BACKBONE_WEIGHTS} = {path!r} shares no layer with this {cfg.name}'s "
            f"{cfg.options['backbone']} backbone; train that backbone as a classifier (model.name = "
            f"{cfg.options['backbone']!r}) and give its model.keras"
        )
    log.info("model: %s backbone %s from the classifier %s (%d layers)", cfg.name, cfg.options["backbone"], path, len(copied))


@register(NAME, options=OPTIONS, head=False, takes_classes=True, check=check_detector,
          normalization=backbone_normalization, load_weights=load_backbone_weights)
def retinanet(x: Any, cfg: ModelConfig, num_classes: int) -> Any:
    """backbone body -> C_levels (+ extra convs) -> FPN -> shared heads -> ``detections``."""
    spec = anchor_spec(cfg)
    maps = backbone_maps(x, cfg, spec.levels)
    return detection_head(fpn(maps, cfg), cfg, num_classes, spec.per_location)


__all__ = [
    "OPTIONS",
    "anchor_spec",
    "backbone_config",
    "backbone_maps",
    "detection_head",
    "feature_maps",
    "fpn",
    "load_backbone_weights",
    "prior_bias",
    "retinanet",
]
