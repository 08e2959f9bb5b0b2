"""unet: a fully convolutional encoder-decoder for semantic segmentation (Ronneberger et al. 2015,
"U-Net: Convolutional Networks for Biomedical Image Segmentation").

Why this design:

* **Skip connections by concatenation.** The encoder halves the resolution ``depth`` times to
  see context; the decoder doubles it back. What the downsampling threw away (exact edges) comes
  back through the skips: at every level the upsampled coarse features are *concatenated* with
  the encoder's features of the same size, so the 3x3 convs that follow can combine "what"
  (coarse, semantic) with "where" (fine, local). Concatenation (not the FPN's addition) keeps
  both sets of channels, as in the paper.
* **Padded ("same") convolutions.** The paper's unpadded convs shrink every map and need
  overlap-tiling; with padding the output has exactly the input's H x W, which is what a
  per-pixel mask label and the export contract want. The price is that sizes must halve
  exactly: an input not divisible by ``2**depth`` is *refused* with one ConfigError line rather
  than silently padded (padding would change what a pixel of the output means).
* **Two decoders.** ``transpose``: Conv2DTranspose(kernel 2, stride 2, "same"), output
  ``s(n - 1) + k - 2p = 2n`` (see :func:`tfcnn.models.autoencoders.transposed_conv_size`), the
  paper's "up-convolution"; kernel 2 = stride 2 means every output pixel gets exactly one
  kernel tap, so no checkerboard overlap. ``upsample``: nearest UpSampling2D then a 3x3 conv
  (Odena et al. 2016: no checkerboard artefacts at all; a 3x3 instead of a 2x2 kernel, so
  somewhat more parameters).
* **Width doubles per level** (``filters * 2**level``, times ``model.width``), so every
  downsampling keeps roughly the same compute per level, as in the paper (64 -> 1024 there,
  16 -> 128 by default here for 28-pixel objects on a CPU).
* **Optional backbone.** ``backbone`` names a registered classifier whose body becomes the
  encoder; its feature maps at strides ``2, 4, ..., 2**depth`` are found by stride exactly as
  the retinanet does (:func:`tfcnn.models.retinanet.backbone_maps`: extra stride-2 convs past
  its deepest map), and the stride-1 skip is a plain conv block on the normalised image (most
  backbones start with a stride-2 stem). Empty: the plain UNet encoder.
* **Output stride** (``output_stride`` 1, 2, 4, ...; FCN's "deconvolution" upsampling, Long et
  al. 2015, and DeepLab's output stride). On a 2-core CPU the full-resolution levels cost most
  of a step (memory traffic of every 96x96 conv, BatchNorm and concat, for little gain on
  28-pixel objects). With ``output_stride = s`` the encoder reaches stride ``s`` with one strided
  3x3 conv per level and keeps no skip there, the decoder stops at stride ``s``, and one
  Conv2DTranspose (kernel ``2s``, stride ``s``) turns its features into full-size logits: the
  output is still ``H x W`` (the export contract does not change), its boundaries learned rather
  than copied from a skip. 1 (the default) is the paper's UNet.
* **Score fusion** (``score_strides``; FCN-8s' skip fusion, Long et al. 2015). The class of a
  28-pixel item is decided deep in the network (stride 8-16, where a cell sees the whole item),
  but in a plain UNet it must reach the logits through the narrow high-resolution decoder
  levels, which are busy with edges. Each listed stride's decoder output (or the bottleneck's,
  at ``2**depth``) also gets a 1x1 conv to class logits, bilinearly upsampled to the input size
  and *added* to the final logits: a short path for "what" next to the decoder's "where", and a
  direct gradient to the deep levels. Cheap: a 1x1 conv at a coarse stride plus a resize.
* BatchNorm / activation / L2 from the ModelConfig as everywhere (:mod:`tfcnn.models.blocks`),
  ``model.dropout`` at the bottleneck (the paper's dropout at the end of the contracting path).

Output: one float32 tensor ``segmentation`` ``[B, H, W, K + 1]`` of logits (softmax over the
last axis): channel 0 is background, channel ``c + 1`` object class ``c``; the mask labels of
:mod:`tfcnn.data.scenes` use the same numbering.
"""

from __future__ import annotations

from typing import Any

from tfcnn.config import ModelConfig
from tfcnn.errors import ConfigError
from tfcnn.models import blocks
from tfcnn.models.lazy import keras
from tfcnn.models.registry import Normalization, get_builder, register, regularizer

NAME = "unet"
DECODERS = ("transpose", "upsample")
MAX_DEPTH = 8
OPTIONS: dict[str, Any] = {
    "depth": 3,  # number of 2x downsamplings; input H and W must be multiples of 2**depth
    "filters": 16,  # channels at full resolution; doubles per level
    "convs": 2,  # 3x3 conv-BN-act per block
    "decoder": "transpose",  # "transpose" (Conv2DTranspose k2 s2) or "upsample" (nearest + 3x3 conv)
    "output_stride": 1,  # stride of the decoder's last level (a power of 2 < 2**depth); a learned upsampling to full size
    "score_strides": [],  # strides in (output_stride, 2**depth] whose features add upsampled class logits
    "backbone": "",  # "": the plain UNet encoder; else a registered classifier's body
    "backbone_options": {},  # that classifier's own model.options
    "backbone_weights": "none",  # "none", "imagenet" / a .weights.h5 path (pretrained backbones), or a tfcnn classifier's .keras
}


def check_unet(cfg: ModelConfig) -> None:
    """The unet options their kinds do not check (the registry's ``check`` hook; builds nothing)."""
    o = cfg.options
    if not 1 <= o["depth"] <= MAX_DEPTH:
        raise ConfigError(f"model.options.depth = {o['depth']!r} must be an integer in 1..{MAX_DEPTH}, e.g. 3")
    blocks.positive_int(o["filters"], "model.options.filters")
    blocks.positive_int(o["convs"], "model.options.convs")
    stride = o["output_stride"]
    if not (isinstance(stride, int) and stride >= 1 and stride & (stride - 1) == 0 and stride < 2 ** o["depth"]):
        raise ConfigError(
            f"model.options.output_stride = {stride!r} must be a power of 2 below 2**depth = {2 ** o['depth']} "
            "(1: full-resolution decoder, 2 or 4: a learned upsampling from that stride)"
        )
    deepest, strides = 2 ** o["depth"], o["score_strides"]
    for s in strides:
        if not (isinstance(s, int) and not isinstance(s, bool) and stride < s <= deepest and s & (s - 1) == 0):
            raise ConfigError(
                f"model.options.score_strides entry {s!r} must be a power of 2 above output_stride = {stride} and at most "
                f"2**depth = {deepest} (a decoder level's stride, or the bottleneck's), e.g. [{min(2 * stride, deepest)}]"
            )
    if len(set(strides)) != len(strides):
        raise ConfigError(f"model.options.score_strides = {strides!r} lists a stride twice; list each once")
    if o["decoder"] not in DECODERS:
        raise ConfigError(
            f"model.options.decoder = {o['decoder']!r} is not allowed; choose one of {', '.join(map(repr, DECODERS))}"
        )
    if o["backbone"]:
        from tfcnn.models.retinanet import check_backbone

        check_backbone(cfg)
    elif o["backbone_options"] or o["backbone_weights"] != "none":
        raise ConfigError(
            "model.options.backbone_options / backbone_weights need model.options.backbone (a registered classifier); "
            "set one or remove them"
        )


def check_input_size(h: int, w: int, depth: int) -> None:
    """Refuse (one ConfigError line) an input whose sides do not halve exactly `depth` times."""
    factor = 2**depth
    if h % factor or w % factor:
        raise ConfigError(
            f"unet: model.options.depth = {depth} halves the input {depth} times, so its height and width must be "
            f"multiples of {factor}, got {h}x{w}; set data.image_size or data.scenes.size to a multiple of {factor} "
            f"(e.g. {max(factor, round(h / factor) * factor)}) or lower model.options.depth"
        )


def level_filters(cfg: ModelConfig, level: int) -> int:
    """Channels at `level` (stride ``2**level``): ``filters * 2**level`` times ``model.width``."""
    return blocks.scaled(int(cfg.options["filters"]) * 2**level, cfg.width)


def conv_block(x: Any, filters: int, cfg: ModelConfig, name: str) -> Any:
    """``convs`` x (3x3 "same" conv -> BN -> activation)."""
    for i in range(1, int(cfg.options["convs"]) + 1):
        x = blocks.conv_bn_act(x, filters, 3, cfg, f"{name}_{i}")
    return x


def _up(x: Any, filters: int, cfg: ModelConfig, name: str) -> Any:
    """Double H and W: a stride-2 transposed conv, or nearest upsampling + 3x3 conv; then BN/act."""
    if cfg.options["decoder"] == "transpose":
        x = keras.layers.Conv2DTranspose(
            filters, 2, strides=2, padding="same", use_bias=not cfg.batch_norm,
            kernel_regularizer=regularizer(cfg), name=f"{name}_upconv",
        )(x)
    else:
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_upsample")(x)
        x = blocks.conv(x, filters, 3, cfg, f"{name}_upconv")
    x = blocks.bn(x, cfg, f"{name}_up_bn")
    return blocks.act(x, cfg, f"{name}_up_act")


def first_level(cfg: ModelConfig) -> int:
    """The decoder's last level: log2 of ``output_stride`` (0 for the paper's full-size decoder)."""
    return int(cfg.options["output_stride"]).bit_length() - 1


def encoder(x: Any, cfg: ModelConfig) -> tuple[list[Any], Any]:
    """(skips at strides 1, 2, ..., 2**(depth-1), None below ``output_stride``; the bottleneck
    input at stride 2**depth)."""
    depth, first = int(cfg.options["depth"]), first_level(cfg)
    if cfg.options["backbone"]:
        from tfcnn.models.retinanet import backbone_maps

        maps = backbone_maps(x, cfg, tuple(range(max(first, 1), depth + 1)), what="model.options.depth")
        stem = conv_block(x, level_filters(cfg, 0), cfg, "enc0") if first == 0 else None
        return [stem] + [maps[level] if level >= first else None for level in range(1, depth)], maps[depth]
    skips: list[Any] = []
    for level in range(first):  # strided stem: no full-resolution work below the output stride
        x = blocks.conv_bn_act(x, level_filters(cfg, level), 3, cfg, f"stem{level}", strides=2)
        skips.append(None)
    for level in range(first, depth):
        x = conv_block(x, level_filters(cfg, level), cfg, f"enc{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    return skips, x


def backbone_normalization(cfg: ModelConfig) -> Normalization | None:
    """A pretrained backbone's fixed pixel normalisation; None (the training split's) otherwise."""
    if not cfg.options.get("backbone"):
        return None
    from tfcnn.models.retinanet import backbone_normalization as fixed

    return fixed(cfg)


def load_backbone_weights(model: Any, cfg: ModelConfig) -> None:
    """``backbone_weights`` != "none": the backbone's layers from its pretrained file."""
    if cfg.options.get("backbone") and cfg.options.get("backbone_weights", "none") != "none":
        from tfcnn.models.retinanet import load_backbone_weights as load

        load(model, cfg)


@register(NAME, options=OPTIONS, head=False, takes_classes=True, check=check_unet,
          normalization=backbone_normalization, load_weights=load_backbone_weights)
def unet(x: Any, cfg: ModelConfig, num_classes: int) -> Any:
    """encoder (plain or a backbone) -> bottleneck (+ dropout) -> decoder with concatenated
    skips -> 1x1 conv to ``num_classes + 1`` float32 logits named ``segmentation``."""
    depth = int(cfg.options["depth"])
    h, w = int(x.shape[1]), int(x.shape[2])
    check_input_size(h, w, depth)
    if cfg.options["backbone"]:
        get_builder(cfg.options["backbone"])  # an unknown name: the registry's did-you-mean line
    skips, x = encoder(x, cfg)
    x = conv_block(x, level_filters(cfg, depth), cfg, "bottleneck")
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name="bottleneck_dropout")(x)
    fused = set(cfg.options["score_strides"])
    scores = [_score(x, depth, cfg, num_classes)] if 2**depth in fused else []
    first = first_level(cfg)
    for level in reversed(range(first, depth)):
        filters = level_filters(cfg, level)
        x = _up(x, filters, cfg, f"dec{level}")
        x = keras.layers.Concatenate(axis=-1, name=f"dec{level}_concat")([x, skips[level]])
        x = conv_block(x, filters, cfg, f"dec{level}")
        if 2**level in fused and level > first:
            scores.append(_score(x, level, cfg, num_classes))
    name = "segmentation_full" if scores else "segmentation"
    if first == 0:
        logits = keras.layers.Conv2D(
            num_classes + 1, 1, kernel_regularizer=regularizer(cfg), dtype="float32", name=name
        )(x)
    else:
        stride = 2**first  # kernel 2s, stride s, "same": output s * n, each pixel from 2 x 2 input taps
        logits = keras.layers.Conv2DTranspose(
            num_classes + 1, 2 * stride, strides=stride, padding="same", kernel_regularizer=regularizer(cfg),
            dtype="float32", name=name,
        )(x)
    if not scores:
        return logits
    return keras.layers.Add(dtype="float32", name="segmentation")([logits, *scores])


def _score(x: Any, level: int, cfg: ModelConfig, num_classes: int) -> Any:
    """Class logits from the features at stride ``2**level``: a 1x1 conv, then bilinear
    upsampling by ``2**level`` to the input size (float32, to be added to the final logits)."""
    s = keras.layers.Conv2D(
        num_classes + 1, 1, kernel_regularizer=regularizer(cfg), dtype="float32", name=f"score{2**level}"
    )(x)
    return keras.layers.UpSampling2D(2**level, interpolation="bilinear", dtype="float32", name=f"score{2**level}_up")(s)


__all__ = ["DECODERS", "OPTIONS", "check_input_size", "check_unet", "conv_block", "encoder", "first_level", "level_filters", "unet"]
