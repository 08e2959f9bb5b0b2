"""`tfcnn benchmark`: batch-1 latency of every runnable artifact of a version, nothing else.

Needs only the version directory (the input shape comes from contract.json), so it can run on a
serving host that has no copy of the training run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from tfcnn.errors import TfcnnError
from tfcnn.rundir import read_json


def benchmark_version(version_dir: Path, *, runs: int = 50, threads: int = 1) -> dict[str, Any]:
    """Median / p95 / mean batch-1 latency (ms) and size per artifact, on one fixed random image."""
    from tfcnn.export.runtime import latency_ms, runner_for, set_tf_threads
    from tfcnn.export.tflite import VARIANTS

    vd = Path(version_dir).resolve()
    contract_path = vd / "contract.json"
    if not contract_path.is_file():
        raise TfcnnError(f"{contract_path} is missing; is {vd} an export version directory?")
    if runs < 1 or threads < 1:
        raise TfcnnError(f"runs and threads must be >= 1 (got runs={runs}, threads={threads})")
    contract = read_json(contract_path)
    h, w = contract["input"]["height"], contract["input"]["width"]
    image = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    tf_threads = set_tf_threads(threads)
    out: dict[str, Any] = {}
    for fmt, entry in contract["artifacts"].items():
        row: dict[str, Any] = {"bytes": _bytes(vd, fmt, entry["file"])}
        if fmt == "coreml":
            if sys.platform != "darwin":
                row["skipped"] = "coremltools cannot run predictions off macOS"
                out[fmt] = row
                continue
            from tfcnn.export.coreml import _ct
            from PIL import Image

            model = _ct().models.MLModel(str(vd / entry["file"]))
            pil = Image.fromarray(image, mode="RGB")
            row.update(latency_ms(lambda: model.predict({"image": pil}), runs))
        elif fmt == "savedmodel" or fmt in VARIANTS:
            runner = runner_for(vd, fmt, threads)
            row.update(latency_ms(runner.one(image), runs))
            row["threads"] = tf_threads if fmt == "savedmodel" else threads
        out[fmt] = row
    return {"version_dir": str(vd), "runs": runs, "threads": threads, "artifacts": out}


def _bytes(vd: Path, fmt: str, rel: str) -> int:
    if fmt == "savedmodel":
        paths = [vd / "saved_model.pb", *(vd / "variables").rglob("*")]
    else:
        p = vd / rel
        paths = [p] if p.is_file() else list(p.rglob("*"))
    return sum(p.stat().st_size for p in paths if p.is_file())
