"""A float32 copy of a model trained under a mixed precision policy, for everything after training.

``train.mixed_precision`` builds the model under Keras' ``mixed_bfloat16`` (CPU, TPU) or
``mixed_float16`` (GPU) policy: float32 variables, low-precision compute. Each layer records its
policy in its config, so a saved model keeps computing in bfloat16 when it is loaded again, and
the TFLite converter cannot translate the bfloat16 ops such a graph holds (the export of every
mixed-precision run failed on the first ``Sub``). Deployment wants float32 arithmetic (then the
export's own quantization), so the trained model is written as float32: the same layers rebuilt
from the same config with every mixed policy replaced by ``float32``, and the same weights. The
variables were float32 all along, so no weight changes; the outputs move by the bfloat16
rounding the training-time compute had (evaluation then measures what the exported files do).
"""

from __future__ import annotations

from typing import Any

from tfcnn.models.lazy import keras

MIXED = ("mixed_bfloat16", "mixed_float16")


def is_mixed(model: "keras.Model") -> bool:
    """Whether any layer (nested models included) computes under a mixed precision policy."""
    return any(getattr(layer, "dtype_policy", None) is not None and layer.dtype_policy.name in MIXED
               for layer in all_layers(model))


def all_layers(model: "keras.Model"):
    """Every layer of ``model``, those of nested models included (depth first)."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


def _float32_config(node: Any) -> Any:
    """The config with every mixed dtype policy (a serialised DTypePolicy or its bare name) made float32."""
    if isinstance(node, dict):
        if node.get("class_name") == "DTypePolicy" and (node.get("config") or {}).get("name") in MIXED:
            return {**node, "config": {**node["config"], "name": "float32"}}
        return {k: ("float32" if k == "dtype" and v in MIXED else _float32_config(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_float32_config(v) for v in node]
    return node


def float32_model(model: "keras.Model") -> "keras.Model":
    """``model`` itself when it computes in float32 already; otherwise a float32 rebuild with its weights."""
    if not is_mixed(model):
        return model
    config = _float32_config(model.get_config())
    with _global_float32():  # layers built without an explicit dtype take the global policy
        copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    if is_mixed(copy):  # a custom layer that does not pass its dtype through its config
        left = sorted({l.name for l in all_layers(copy) if l.dtype_policy.name in MIXED})
        raise ValueError(f"layers {left} stay in mixed precision after a float32 rebuild: give them a get_config with dtype")
    return copy


class _global_float32:
    """The process-wide policy float32 while building, then what it was."""

    def __enter__(self) -> None:
        self.previous = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy("float32")

    def __exit__(self, *exc: object) -> None:
        keras.mixed_precision.set_global_policy(self.previous)
