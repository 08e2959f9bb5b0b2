"""Distribution strategy, mixed-precision policy and seeding for a training run."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator

import keras
import tensorflow as tf

from tfcnn.config import TrainConfig
from tfcnn.errors import ConfigError


def make_strategy(tc: TrainConfig) -> tf.distribute.Strategy:
    """The tf.distribute strategy named by ``train.strategy`` (with one clear error per failure)."""
    if tc.strategy == "default":
        return tf.distribute.get_strategy()
    if tc.strategy == "mirrored":
        devices = tc.devices
        if devices:
            known = {_norm(d.name) for d in tf.config.list_logical_devices()}
            missing = [d for d in devices if _norm(d) not in known]
            if missing:
                raise ConfigError(
                    f"train.devices names {missing[0]!r}, which this machine does not have; "
                    f"available: {', '.join(sorted(known))}"
                )
        return tf.distribute.MirroredStrategy(devices=devices)
    if tc.strategy == "multi_worker":
        raw = os.environ.get("TF_CONFIG")
        if raw:
            try:
                json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"TF_CONFIG is not valid JSON ({exc}); see tf.distribute.MultiWorkerMirroredStrategy") from None
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"train.strategy = 'multi_worker' could not start ({exc}); it must be created before TensorFlow "
                "runs any op, so start each worker with `tfcnn train` and TF_CONFIG set"
            ) from None
    if tc.strategy == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", ""))
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as exc:
            raise ConfigError(
                f"train.strategy = 'tpu' but no TPU is reachable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                "set TPU_NAME or use strategy 'default' or 'mirrored'"
            ) from None
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"train.strategy = {tc.strategy!r} is unknown")  # pragma: no cover


def _norm(name: str) -> str:
    """'/cpu:0', '/device:CPU:0' and '/job:localhost/replica:0/task:0/device:CPU:0' are one device."""
    return tf.DeviceSpec.from_string(name).to_string().split("device:")[-1].upper() or name.upper()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes the run directory; other workers write to a scratch directory."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    spec = resolver.cluster_spec().as_dict() if resolver.cluster_spec() else {}
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in spec


def precision_policy(tc: TrainConfig, strategy: tf.distribute.Strategy) -> str:
    """float32, or mixed_float16 on GPU and mixed_bfloat16 on CPU/TPU (float16 needs GPU tensor cores)."""
    if not tc.mixed_precision:
        return "float32"
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "mixed_bfloat16"
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


@contextlib.contextmanager
def global_policy(name: str) -> Iterator[None]:
    """Build the model under a dtype policy, then put the process-wide policy back for later stages."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def seed_everything(tc: TrainConfig) -> None:
    """Python, NumPy, TF and Keras seeds; op determinism when asked (slower, process-wide)."""
    keras.utils.set_random_seed(tc.seed)
    if tc.deterministic:
        tf.config.experimental.enable_op_determinism()
