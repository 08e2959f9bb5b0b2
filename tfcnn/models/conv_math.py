"""Convolution arithmetic: output sizes, parameter counts and receptive fields.

Output size: floor((n + 2p - k) / s) + 1 (Dumoulin & Visin 2016, "A guide to convolution
arithmetic for deep learning"; the +1 is easy to drop). Keras "valid" is p = 0;
Keras/TF "same" gives ceil(n / s) by padding (k - 1)-ish pixels, the odd one at the end.
Receptive field of layer l: r_l = r_{l-1} + (k_l - 1) * prod(s_1 .. s_{l-1}), r_0 = 1
(so 3x3 stride-1 stacks see 3, 5, 7, and stride 2 in layer 2 gives 3, 5, 9, not 3, 7, 11;
Araujo, Norris & Sim 2019, "Computing receptive fields of convolutional neural networks").
``tests/test_models.py`` checks every formula against the shapes Keras builds.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import keras

Padding = Literal["same", "valid"]


def _positive(name: str, value: int, minimum: int = 1) -> None:
    if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def conv_output_size(n: int, k: int, s: int = 1, p: int = 0, dilation: int = 1) -> int:
    """floor((n + 2p - k_eff) / s) + 1 with k_eff = dilation * (k - 1) + 1 (pooling works the same)."""
    _positive("n", n)
    _positive("k", k)
    _positive("s", s)
    _positive("p", p, 0)
    _positive("dilation", dilation)
    k_eff = dilation * (k - 1) + 1
    if n + 2 * p < k_eff:
        raise ValueError(f"a {k_eff}-wide kernel does not fit an input of {n} padded by {p} on each side")
    return (n + 2 * p - k_eff) // s + 1


def output_size(n: int, k: int, s: int = 1, padding: Padding = "valid", dilation: int = 1) -> int:
    """What Keras Conv2D/MaxPooling2D produce for `padding` "valid" or "same"."""
    if padding == "valid":
        return conv_output_size(n, k, s, 0, dilation)
    if padding == "same":
        _positive("n", n)
        _positive("s", s)
        return math.ceil(n / s)
    raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")


def same_padding(n: int, k: int, s: int = 1, dilation: int = 1) -> tuple[int, int]:
    """(before, after) zero padding that TF's "same" adds; the odd pixel goes after.

    Total = max((ceil(n/s) - 1) * s + k_eff - n, 0). With stride 1 and odd k it is (k-1)/2 each side,
    which is the p in conv_output_size that keeps n unchanged.
    """
    out = output_size(n, k, s, "same")
    k_eff = dilation * (k - 1) + 1
    total = max((out - 1) * s + k_eff - n, 0)
    return total // 2, total - total // 2


def conv_params(k: int | tuple[int, int], c_in: int, c_out: int, bias: bool = True) -> int:
    """Weights of a Conv2D: k_h * k_w * c_in * c_out (+ c_out biases). 64 3x3x3 filters -> 1,792."""
    kh, kw = (k, k) if isinstance(k, int) else k
    return kh * kw * c_in * c_out + (c_out if bias else 0)


def depthwise_separable_params(k: int, c_in: int, c_out: int, bias: bool = True) -> int:
    """Depthwise k x k (one filter per input channel) plus a 1x1 pointwise conv."""
    return conv_params(k, 1, c_in, bias) + conv_params(1, c_in, c_out, bias)


def receptive_fields(kernels: Sequence[int], strides: Sequence[int] | None = None) -> list[int]:
    """Receptive field (input pixels per side) after each layer of a chain of convs/pools."""
    strides = list(strides) if strides is not None else [1] * len(kernels)
    if len(strides) != len(kernels):
        raise ValueError(f"got {len(kernels)} kernel sizes but {len(strides)} strides; give one stride per layer")
    r, jump, out = 1, 1, []
    for k, s in zip(kernels, strides):
        _positive("kernel size", k)
        _positive("stride", s)
        r += (k - 1) * jump
        jump *= s
        out.append(r)
    return out


def _spatial(layer: keras.layers.Layer) -> tuple[int, int] | None:
    """(kernel, stride) along the height axis for layers that change the receptive field."""
    # SeparableConv2D is not a Conv2D subclass in Keras 3; its depthwise kernel sets the field.
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
        k = (layer.kernel_size[0] - 1) * layer.dilation_rate[0] + 1
        return k, layer.strides[0]
    if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
        return layer.pool_size[0], layer.strides[0]
    return None


def model_receptive_fields(model: keras.Model) -> dict[str, tuple[int, int]]:
    """Per-layer (receptive field, cumulative stride) of a functional model's 4-D feature maps.

    Follows the graph, so branching models are handled: where branches merge (Add, Multiply,
    Concatenate) the larger receptive field wins. Layers after global pooling are left out.
    Vertical extent only; every tfcnn architecture uses square kernels.
    """
    fields: dict[str, tuple[int, int]] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            fields[layer.name] = (1, 1)
            continue
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        parents = [t._keras_history[0].name for t in inputs if hasattr(t, "_keras_history")]
        known = [fields[p] for p in parents if p in fields]
        if not known or len(layer.output.shape) != 4:
            continue
        r, jump = max(known)
        spatial = _spatial(layer)
        if spatial is not None:
            k, s = spatial
            r, jump = r + (k - 1) * jump, jump * s
        fields[layer.name] = (r, jump)
    return fields
