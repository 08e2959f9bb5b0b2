"""Learning-rate schedules and optimizers from ``[train]``, shared by both engines.

Schedules are Keras ``LearningRateSchedule`` objects evaluated at ``optimizer.iterations``, so
the learning rate follows the step count stored in a checkpoint and a resumed run continues
the same curve. Built-in schedules are used where one exists (cosine and one-cycle ride on
``CosineDecay``'s warm-up); only warm-up in front of constant/exponential/step is our own.
"""

from __future__ import annotations

import math

import keras

from tfcnn.config import TrainConfig
from tfcnn.errors import ConfigError

Schedule = float | keras.optimizers.schedules.LearningRateSchedule

# Decoupled weight decay is applied to kernels only: decaying biases and BatchNorm scales
# toward zero only fights the normalization.
NO_DECAY = ["bias", "gamma", "beta"]


@keras.saving.register_keras_serializable(package="tfcnn")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear ramp from 0 to ``after(0)`` over ``warmup_steps``, then ``after(step - warmup_steps)``."""

    def __init__(self, after: Schedule, warmup_steps: int):
        self.after = after
        self.warmup_steps = int(warmup_steps)

    def _after(self, step):
        if isinstance(self.after, keras.optimizers.schedules.LearningRateSchedule):
            return self.after(step)
        return keras.ops.cast(self.after, "float32")

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        ramp = self._after(0.0) * keras.ops.minimum((step + 1.0) / warm, 1.0)
        return keras.ops.where(step < warm, ramp, self._after(keras.ops.maximum(step - warm, 0.0)))

    def get_config(self):
        after = self.after
        if isinstance(after, keras.optimizers.schedules.LearningRateSchedule):
            after = keras.saving.serialize_keras_object(after)
        return {"after": after, "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        after = config["after"]
        if isinstance(after, dict):
            after = keras.saving.deserialize_keras_object(after)
        return cls(after, config["warmup_steps"])


def build_schedule(tc: TrainConfig, steps_per_epoch: int) -> Schedule:
    """The learning rate as a float (constant) or a schedule over optimizer steps."""
    lr = tc.learning_rate
    # With gradient accumulation the optimizer (and its step counter) moves once per
    # accumulated group of batches, so the schedule counts those updates.
    spe = max(math.ceil(int(steps_per_epoch) / max(tc.gradient_accumulation_steps, 1)), 1)
    total = max(tc.epochs * spe, 1)
    warm = int(round(tc.warmup_epochs * spe))
    if warm >= total and tc.schedule != "constant":
        raise ConfigError(
            f"train.warmup_epochs = {tc.warmup_epochs} leaves no epochs to decay over (train.epochs = {tc.epochs}); "
            "lower warmup_epochs"
        )
    floor = lr * tc.min_lr_fraction
    sched: Schedule
    if tc.schedule == "constant":
        return LinearWarmup(lr, warm) if warm > 0 else lr
    if tc.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warm else lr,
            decay_steps=total - warm,
            alpha=tc.min_lr_fraction,
            warmup_target=lr if warm else None,
            warmup_steps=warm,
        )
    if tc.schedule == "cosine_restarts":
        # SGDR (Loshchilov & Hutter) as Keras builds it; warm-up, if any, ramps into the first cycle.
        first = int(round(tc.restart_epochs * spe)) if tc.restart_epochs else max((total - warm) // 3, 1)
        sched = keras.optimizers.schedules.CosineDecayRestarts(
            initial_learning_rate=lr, first_decay_steps=max(first, 1), t_mul=tc.restart_mult,
            m_mul=tc.restart_decay, alpha=tc.min_lr_fraction,
        )
        return LinearWarmup(sched, warm) if warm > 0 else sched
    if tc.schedule == "onecycle":
        # Leslie Smith's one-cycle as Keras builds it: linear ramp from lr/25 to lr over the warm-up
        # (30% of training unless warmup_epochs says otherwise), then cosine annealing to the floor.
        warm = warm or max(int(0.3 * total), 1)
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=lr / 25.0,
            decay_steps=max(total - warm, 1),
            alpha=tc.min_lr_fraction or 1e-4,
            warmup_target=lr,
            warmup_steps=warm,
        )
    if tc.schedule == "exponential":
        sched = keras.optimizers.schedules.ExponentialDecay(
            initial_learning_rate=lr, decay_steps=spe, decay_rate=tc.decay_rate
        )
    elif tc.schedule == "step":
        every = tc.step_epochs or max(tc.epochs // 3, 1)
        drops = max(math.ceil(tc.epochs / every) - 1, 0)
        if drops == 0:
            sched = lr
        else:
            sched = keras.optimizers.schedules.PiecewiseConstantDecay(
                # PiecewiseConstantDecay keeps values[i] while step <= boundaries[i]; step counts from 0
                boundaries=[k * every * spe - 1 for k in range(1, drops + 1)],
                values=[max(lr * tc.step_factor**k, floor) for k in range(drops + 1)],
            )
    else:  # pragma: no cover - the config's Literal type rejects anything else
        raise ConfigError(f"train.schedule = {tc.schedule!r} is unknown")
    return LinearWarmup(sched, warm) if warm > 0 else sched


def build_optimizer(tc: TrainConfig, schedule: Schedule, *, clipnorm: bool = True) -> keras.optimizers.Optimizer:
    """Adam/AdamW/SGD/RMSprop/Adagrad/Lion with decoupled weight decay, (optionally) per-variable
    clipnorm, and Keras' own weight EMA and gradient accumulation when ``[train]`` asks for them.

    The tape engine passes ``clipnorm=False`` and clips after its own cross-replica sum, because
    Keras clips inside ``apply`` before summing replicas' partial gradients.
    """
    kwargs: dict = {"learning_rate": schedule}
    if clipnorm and tc.clipnorm:
        kwargs["clipnorm"] = tc.clipnorm
    if tc.use_ema:
        kwargs.update(use_ema=True, ema_momentum=tc.ema_momentum)
    if tc.gradient_accumulation_steps > 1:
        kwargs["gradient_accumulation_steps"] = tc.gradient_accumulation_steps
    if tc.optimizer == "adam":
        opt = keras.optimizers.Adam(weight_decay=tc.weight_decay or None, **kwargs)
    elif tc.optimizer == "adamw":
        opt = keras.optimizers.AdamW(weight_decay=tc.weight_decay, **kwargs)
    elif tc.optimizer == "sgd":
        opt = keras.optimizers.SGD(momentum=tc.momentum, nesterov=tc.nesterov, weight_decay=tc.weight_decay or None, **kwargs)
    elif tc.optimizer == "rmsprop":
        opt = keras.optimizers.RMSprop(momentum=tc.momentum, weight_decay=tc.weight_decay or None, **kwargs)
    elif tc.optimizer == "adagrad":
        opt = keras.optimizers.Adagrad(weight_decay=tc.weight_decay or None, **kwargs)
    elif tc.optimizer == "lion":
        # Lion's sign update is ~10x larger per step than Adam's at the same rate (Chen et al.
        # suggest a 3-10x lower learning rate); tfcnn takes learning_rate as given.
        opt = keras.optimizers.Lion(weight_decay=tc.weight_decay or None, **kwargs)
    else:  # pragma: no cover
        raise ConfigError(f"train.optimizer = {tc.optimizer!r} is unknown")
    if tc.weight_decay:
        opt.exclude_from_weight_decay(var_names=NO_DECAY)
    return opt


def current_lr(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate the next step will use (schedules are evaluated at optimizer.iterations)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(keras.ops.convert_to_numpy(inner.learning_rate))
