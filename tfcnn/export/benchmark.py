"""`tfcnn benchmark`: batch-1 latency of every runnable artifact of a version, nothing else.

Needs only the version directory (the input shape comes from contract.json), so it can run on a
serving host that has no copy of the training run. Formats come from the registry: each runs
with its own runner, and one that cannot run here says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tfcnn.errors import TfcnnError
from tfcnn.export.formats import FORMATS
from tfcnn.util import read_json


def benchmark_version(version_dir: Path, *, runs: int = 50, threads: int = 1) -> dict[str, Any]:
    """Median / p95 / mean batch-1 latency (ms) and size per artifact, on one fixed random image."""
    from tfcnn.export.runtime import latency_ms, set_tf_threads

    vd = Path(version_dir).resolve()
    contract_path = vd / "contract.json"
    if not contract_path.is_file():
        raise TfcnnError(f"{contract_path} is missing; is {vd} an export version directory?")
    if runs < 1 or threads < 1:
        raise TfcnnError(f"runs and threads must be >= 1 (got runs={runs}, threads={threads})")
    contract = read_json(contract_path)
    h, w = contract["input"]["height"], contract["input"]["width"]
    image = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    set_tf_threads(threads)
    files = [p for p in vd.rglob("*") if p.is_file()]
    out: dict[str, Any] = {}
    for name, entry in contract["artifacts"].items():
        fmt = FORMATS.get(name)
        if fmt is None:
            out[name] = {"skipped": f"{name!r} is not a format this tfcnn knows"}
            continue
        row: dict[str, Any] = {"bytes": sum(p.stat().st_size for p in files if fmt.owns(p.relative_to(vd).as_posix()))}
        reason = fmt.cannot_run() or (None if fmt.runner else "this format has no runner")
        if reason:
            row["skipped"] = reason
        else:
            runner = fmt.runner(vd, entry, threads)
            note = getattr(runner, "latency_note", None)  # a stand-in runtime's speed is not the format's
            if note:
                row["skipped"] = note
            else:
                row.update(latency_ms(runner.one(image), runs))
                row["threads"] = runner.threads
        out[name] = row
    return {"version_dir": str(vd), "runs": runs, "threads": threads, "artifacts": out}
