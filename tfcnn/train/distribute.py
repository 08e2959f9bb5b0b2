"""Distribution strategy, mixed-precision policy and seeding for a training run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import keras
import tensorflow as tf

from tfcnn.config import TrainConfig
from tfcnn.errors import ConfigError


_STARTED: dict[str, tf.distribute.Strategy] = {}


def start_strategy(tc: TrainConfig) -> tf.distribute.Strategy | None:
    """Create ``train.strategy`` now when it must exist before TensorFlow runs any op.

    MultiWorkerMirroredStrategy configures the process's collective ops, which TensorFlow allows
    only before its first op: created after the data are decoded it fails ("Collective ops must
    be configured at program startup"). The pipeline calls this first; :func:`make_strategy`
    then returns the same object. Other strategies are created when training starts (None here).
    """
    return make_strategy(tc) if tc.strategy == "multi_worker" else None


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
        if _STARTED.get("multi_worker") is not None:  # one per process, created by start_strategy
            return _STARTED["multi_worker"]
        raw = os.environ.get("TF_CONFIG")
        if raw:
            try:
                json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"TF_CONFIG is not valid JSON ({exc}); see tf.distribute.MultiWorkerMirroredStrategy") from None
        try:
            _STARTED["multi_worker"] = tf.distribute.MultiWorkerMirroredStrategy()
            return _STARTED["multi_worker"]
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


WORKER_PREFIX = "tfcnn-worker"


def worker_scratch(run_root: Path, strategy: tf.distribute.Strategy) -> Path:
    """Where a non-chief worker writes (its checkpoints included): the same path every time the
    same worker trains the same run, so rerunning every worker after a failure resumes them all
    from their own last checkpoint, at the same epoch as the chief. A path that is already a
    worker's scratch directory is its own."""
    if Path(run_root).name.startswith(WORKER_PREFIX):
        return Path(run_root)
    resolver = strategy.cluster_resolver
    key = hashlib.sha256(str(Path(run_root).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"{WORKER_PREFIX}-{resolver.task_type}{resolver.task_id}-{key}"


LOST_PEER = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError, tf.errors.CancelledError)


def lost_worker_error(exc: Exception, checkpoints: Path) -> str:
    """The one line a worker gives when a peer died under it (MultiWorkerMirroredStrategy's
    health check aborts the collective ops: measured, the chief stopped 2.4 s after its peer was
    killed), naming the checkpoint a rerun resumes from."""
    latest = tf.train.latest_checkpoint(str(checkpoints))
    resume = f"the last checkpoint is {Path(latest).name}" if latest else "no checkpoint was written yet"
    text = next((line.strip() for line in str(exc).splitlines() if "aborted" in line.lower() or "unavailable" in line.lower()), "")
    return (f"train: a worker of the multi-worker cluster was lost ({type(exc).__name__}{': ' + text[:160] if text else ''}); "
            f"{resume}: start every worker again with the same command and TF_CONFIG to resume from it")


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 flags in /proc/cpuinfo for bfloat16 arithmetic
# what "auto" asks of a CPU: AMX's bfloat16 tiles. Measured on the main job's compact_cnn
# (bench/settings_ab.py, README "Mixed precision"): 1.3x faster on an Intel Xeon with AMX, 11%
# slower on an AMD EPYC with AVX512-BF16 alone (there only larger convolutions gained)
AUTO_BF16_CPU_FLAGS = ("amx_bf16",)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 ``flags``, ARM ``Features``); empty
    elsewhere or when the file cannot be read."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_has_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX; ARM's ``bf16``), where
    oneDNN can run mixed_bfloat16 faster than float32; without them bfloat16 is emulated and slower."""
    return bool(cpu_flags(cpuinfo) & {*BF16_CPU_FLAGS, "bf16"})


def cpu_has_amx_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has AMX's bfloat16 tiles, where ``mixed_precision = "auto"`` trains in bfloat16."""
    return bool(cpu_flags(cpuinfo) & set(AUTO_BF16_CPU_FLAGS))


def precision_policy(tc: TrainConfig, strategy: tf.distribute.Strategy) -> str:
    """float32, or mixed_float16 on GPU and mixed_bfloat16 on CPU/TPU (float16 needs GPU tensor cores).

    ``mixed_precision = "auto"`` is mixed only where it pays: on a GPU, a TPU, or a CPU with AMX
    (``AUTO_BF16_CPU_FLAGS`` says why not AVX512-BF16 alone); ``true`` is bfloat16 on any CPU."""
    if not tc.mixed_precision:
        return "float32"
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "mixed_bfloat16"
    if tf.config.list_logical_devices("GPU"):
        return "mixed_float16"
    if tc.mixed_precision == "auto" and not cpu_has_amx_bfloat16():
        return "float32"
    return "mixed_bfloat16"


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
