"""One description of the machine for every benchmark's JSON line.

Why the CPU flags: on x86 the results turn on them. TensorFlow's wheels enable oneDNN by
default only with AVX512-VNNI/BF16 or AMX, and LiteRT's int8 kernels beat float32 by far more
where VNNI exists, so a figure without them cannot be compared with another machine's.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu() -> tuple[str, list[str]]:
    """CPU model name and which of FLAGS it has (Linux /proc/cpuinfo; elsewhere the platform name)."""
    name, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return name, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            name = value.strip()
        elif key.strip() == "flags":
            have = set(value.split())
            flags = [f for f in FLAGS if f in have]
            break
    return name, flags


def describe() -> str:
    """E.g. "2 CPUs, AMD EPYC (avx2 avx512f avx512_vnni avx512_bf16), no GPU, tensorflow 2.21.0, TF_ENABLE_ONEDNN_OPTS=1"."""
    name, flags = cpu()
    parts = [f"{os.cpu_count()} CPUs, {name} ({' '.join(flags) or 'no AVX2'})"]
    tf = sys.modules.get("tensorflow")  # only describe TensorFlow where the caller loaded it
    if tf is not None:
        gpus = tf.config.list_physical_devices("GPU")
        parts.append(f"{len(gpus)} GPU" if gpus else "no GPU")
        parts.append(f"tensorflow {tf.__version__}")
        parts.append(f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}")
    return ", ".join(parts)
