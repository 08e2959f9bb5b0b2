"""Fine-tuning a pretrained backbone: freezing, gradual unfreezing, discriminative learning rates.

``[train.finetune]`` (:class:`tfcnn.config.FinetuneConfig`) is applied by both engines through
one :class:`Finetuner`:

* **What is the backbone.** The model's layers, nested models flattened (a ``keras.applications``
  backbone is one layer holding hundreds), in order; the head starts at the first layer whose
  output has no spatial axes (the global pooling) or that is a head adapter (``adapter_*``, see
  :func:`tfcnn.models.blocks.classifier_head`). Everything before it with weights is the
  backbone. ``freeze`` is a fraction of those weighted backbone layers counted from the input
  side, or a layer name (that layer and every layer before it).
* **Frozen means frozen.** A frozen layer gets ``trainable = False``: no gradient, no optimizer
  update, no L2 term, and a BatchNormalization in it runs in inference mode (Keras 3 does that for
  a non-trainable BN), so its moving statistics stay the pretrained ones. For *unfrozen* backbone
  BN, ``batch_norm`` is the explicit choice: "frozen" (the default, Keras' own fine-tuning advice:
  small-batch statistics would overwrite ImageNet's) or "train".
* **Gradual unfreezing** (``unfreeze = {epoch = freeze}``) is a pure function of the epoch, so a
  resumed run freezes exactly what the interrupted one had at that epoch. Engines call
  :meth:`Finetuner.apply` at every epoch start and retrace their step when it reports a change.
  The optimizer is built on every variable that can ever train *before* the first freeze, because
  a Keras 3 optimizer refuses variables it was not built with.
* **Discriminative learning rates** (``lr_multipliers``): one optimizer, with each variable's
  update step given ``learning_rate * multiplier`` of its layer group. Scaling gradients instead
  would be wrong for Adam-like optimizers, whose step is invariant to the gradient's scale; Keras 3
  has no ``MultiOptimizer`` (that was TF-Addons, for Keras 2). Decoupled weight decay keeps the
  unscaled rate.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import keras

from tfcnn.config import FinetuneConfig
from tfcnn.errors import ConfigError
from tfcnn.util import log

ADAPTER_PREFIX = "adapter"
GROUPS = ("backbone", "head")


def flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every leaf layer in order, nested models (a keras.applications backbone) expanded."""
    out: list[keras.layers.Layer] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(flat_layers(layer))
        else:
            out.append(layer)
    return out


def _is_head_start(layer: keras.layers.Layer) -> bool:
    if layer.name.startswith(ADAPTER_PREFIX):
        return True
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):  # a layer without a single symbolic output
        return False
    return isinstance(layer, keras.layers.Layer) and len(shape) == 2


@dataclass
class Finetuner:
    """The freezing plan of one model (see the module docstring)."""

    cfg: FinetuneConfig
    backbone: list[keras.layers.Layer]  # weighted backbone layers, input side first
    head: list[keras.layers.Layer]
    fixed: frozenset[str] = frozenset()  # layers built non-trainable (e.g. a constant RGB->BGR conv): never thawed
    history: list[tuple[int, int]] = field(default_factory=list)  # (epoch, frozen layers) at each change

    @classmethod
    def build(cls, cfg: FinetuneConfig, model: keras.Model) -> "Finetuner | None":
        """The plan, checked against the model, or None when ``[train.finetune]`` asks for nothing."""
        if cfg.freeze is None and not cfg.unfreeze and not cfg.lr_multipliers:
            return None
        layers = flat_layers(model)
        start = next((i for i, l in enumerate(layers) if _is_head_start(l)), len(layers))
        backbone = [l for l in layers[:start] if l.weights]
        head = [l for l in layers[start:] if l.weights]
        if not backbone:
            raise ConfigError(f"train.finetune: {model.name} has no backbone layers with weights before its head; remove [train.finetune]")
        plan = cls(cfg, backbone, head, frozenset(l.name for l in backbone if not l.trainable))
        for value in [cfg.freeze, *cfg.unfreeze.values()]:
            plan.frozen_count(value)  # every scheduled value must be valid before training starts
        for key, value in cfg.unfreeze.items():
            if not str(key).isdigit() or int(key) < 1:
                raise ConfigError(f"train.finetune.unfreeze key {key!r} must be an epoch number >= 1, e.g. {{3 = 0.5}}")
        plan.multipliers()  # patterns must match layers
        return plan

    # ------------------------------------------------------------------ freezing

    def frozen_count(self, value: Any) -> int:
        """How many backbone layers (input side first) a freeze value freezes."""
        if value is None:
            return 0
        if isinstance(value, bool):
            raise ConfigError(f"train.finetune.freeze = {value!r}; give a fraction in [0, 1] or a layer name")
        if isinstance(value, (int, float)):
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"train.finetune.freeze = {value!r} is a fraction of the backbone; it must be within [0, 1]")
            return int(round(float(value) * len(self.backbone)))
        names = [l.name for l in self.backbone]
        if value not in names:
            close = [n for n in names if value in n or n in value][:5] or names[:3] + ["..."] + names[-3:]
            raise ConfigError(
                f"train.finetune.freeze = {value!r} is not a backbone layer with weights of this model; e.g. {', '.join(close)}"
            )
        return names.index(value) + 1

    def value_at(self, epoch: int) -> Any:
        """The freeze value in force at a (1-based) epoch: the latest schedule entry at or before it."""
        value = self.cfg.freeze
        for key in sorted(self.cfg.unfreeze, key=int):
            if int(key) <= epoch:
                value = self.cfg.unfreeze[key]
        return value

    @property
    def freezing(self) -> bool:
        """Whether the plan freezes anything at some epoch (learning-rate multipliers alone do not)."""
        return self.cfg.freeze is not None or bool(self.cfg.unfreeze)

    def apply(self, epoch: int) -> bool:
        """Set ``trainable`` for the (1-based) epoch; True when any layer's flag changed, so the
        engine must retrace its train step (a traced step holds the trainable list it saw)."""
        if not self.freezing:
            return False
        n = self.frozen_count(self.value_at(epoch))
        before = [l.trainable for l in self.backbone]
        for i, layer in enumerate(self.backbone):
            bn = isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = i >= n and layer.name not in self.fixed and not (bn and self.cfg.batch_norm == "frozen")
        changed = before != [l.trainable for l in self.backbone]
        if changed or not self.history:
            self.history.append((epoch, n))
            log.info(
                "train: finetune: epoch %d: %d of %d backbone layers frozen%s",
                epoch, n, len(self.backbone),
                "" if self.cfg.batch_norm == "train" else ", BatchNormalization in inference mode throughout the backbone",
            )
        return changed

    # ------------------------------------------------------------------ learning rates

    def multipliers(self) -> dict[str, float]:
        """Layer name -> learning-rate multiplier for every layer whose multiplier is not 1."""
        table = self.cfg.lr_multipliers
        for key, value in table.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"train.finetune.lr_multipliers.{key} = {value!r} must be a number >= 0")
        patterns = [k for k in table if k not in GROUPS]
        layers = [("backbone", l) for l in self.backbone] + [("head", l) for l in self.head]
        for pat in patterns:
            if not any(fnmatch.fnmatchcase(l.name, pat) for _, l in layers):
                raise ConfigError(
                    f"train.finetune.lr_multipliers: {pat!r} matches no layer with weights; use 'backbone', 'head' "
                    f"or a layer-name pattern such as {self.backbone[0].name!r}"
                )
        out: dict[str, float] = {}
        for group, layer in layers:
            m = next((float(table[p]) for p in patterns if fnmatch.fnmatchcase(layer.name, p)), float(table.get(group, 1.0)))
            if m != 1.0:
                out[layer.name] = m
        return out

    def scale_learning_rates(self, optimizer: keras.optimizers.Optimizer) -> None:
        """Give each variable's update step its group's learning rate (built optimizer, before training)."""
        per_layer = self.multipliers()
        if not per_layer:
            return
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        by_key: dict[Any, float] = {}
        for layer in self.backbone + self.head:
            if layer.name in per_layer:
                for v in layer.weights:
                    by_key[inner._var_key(v)] = per_layer[layer.name]  # noqa: SLF001 - the optimizer's own key
        plain = inner.update_step

        def update_step(gradient: Any, variable: Any, learning_rate: Any) -> Any:
            m = by_key.get(inner._var_key(variable))  # noqa: SLF001
            if m is not None:
                learning_rate = learning_rate * m
            return plain(gradient, variable, learning_rate)

        inner.update_step = update_step  # this instance only: a saved optimizer config stays the stock one
        log.info("train: finetune: learning-rate multipliers %s", ", ".join(f"{k} x{v:g}" for k, v in self.cfg.lr_multipliers.items()))

