"""`tfcnn predict VERSION_DIR`: classify image files with one exported artifact, as a client would.

An export version directory (``contract.json`` + ``model_card.json``) is predicted with one of
its formats' runners (the SavedModel's ``serving_default``, a LiteRT interpreter, ONNX Runtime,
...; see :mod:`tfcnn.export.formats`), fed what the contract says: RGB uint8 NHWC at the
contract's height x width, each file decoded by :func:`tfcnn.data.images.load_image` (bilinear
resize in the file's own channels with the contract's ``fit``, grey replicated to RGB; grey
models convert in-graph).
Batching, error rows, progress and the row layout are :mod:`tfcnn.prediction`'s, so a run and a
version give the same rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tfcnn.data.images import load_image
from tfcnn.errors import TfcnnError
from tfcnn.export.formats import FORMATS, ordered
from tfcnn.prediction import BATCH_SIZE, classify
from tfcnn.run import Run
from tfcnn.util import first_line, read_json

CONTRACT = "contract.json"
CARD = "model_card.json"
LABELS = "labels.txt"
DEFAULT_FORMAT = "savedmodel"


def is_version_dir(path: "Path | str") -> bool:
    """An export version directory: has contract.json and model_card.json."""
    p = Path(path)
    return (p / CONTRACT).is_file() and (p / CARD).is_file()


def _contract(vd: Path) -> dict[str, Any]:
    if not vd.is_dir():
        raise TfcnnError(f"export version directory {str(vd)!r} does not exist")
    if not is_version_dir(vd):
        raise TfcnnError(f"{str(vd)!r} is not an export version directory (no {CONTRACT} + {CARD}); pass export/<name>/<version>")
    return read_json(vd / CONTRACT, what="the export contract", fix="re-export the run with `tfcnn export RUN_DIR`")


def available_formats(version_dir: "Path | str") -> tuple[list[str], dict[str, str]]:
    """(formats of this version that can predict here, in registry order; {format: why not} for the rest)."""
    entries = _contract(Path(version_dir)).get("artifacts", {})
    runnable: list[str] = []
    not_here: dict[str, str] = {}
    for fmt in ordered():
        if fmt.name not in entries:
            continue
        reason = fmt.cannot_run() if fmt.runner is not None else "this format has no runner"
        if reason is None:
            runnable.append(fmt.name)
        else:
            not_here[fmt.name] = reason
    for name in entries:
        if name not in FORMATS:
            not_here[name] = "not a format this tfcnn knows"
    return runnable, not_here


def choose_format(version_dir: "Path | str", format: str | None = None) -> str:
    """The format to predict with: ``format`` if this version has it and it can run here, else
    savedmodel when present, else the first runnable one; anything else is one error line."""
    vd = Path(version_dir)
    runnable, not_here = available_formats(vd)
    choices = ", ".join(runnable) if runnable else "none"
    elsewhere = "; ".join(f"{n}: {why}" for n, why in not_here.items())
    tail = f" (not runnable here: {elsewhere})" if elsewhere else ""
    if format is None:
        if not runnable:
            raise TfcnnError(f"no format of {vd} can predict on this machine{tail}")
        return DEFAULT_FORMAT if DEFAULT_FORMAT in runnable else runnable[0]
    if format in runnable:
        return format
    if format in not_here:
        why = f"cannot run here ({not_here[format]})"
    elif format in FORMATS:
        why = "was not exported into this version"
    else:
        why = "is not a registered export format"
    raise TfcnnError(f"format {format!r} {why}; choose one of {choices} for {vd}{tail}")


def check_source(path: "Path | str", format: str | None = None) -> tuple[str, str | None]:
    """What ``tfcnn predict`` was given: ``("version", chosen format)`` for an export version,
    ``("run", None)`` for a run directory with its model; anything else is one error line."""
    p = Path(path)
    if is_version_dir(p):
        return "version", choose_format(p, format)
    if not p.exists():
        raise TfcnnError(
            f"{str(p)!r} does not exist; pass a run directory (runs/<name>) or an export version directory (export/<name>/<version>)"
        )
    config = Run(p).path("config")
    if p.is_dir() and not config.is_file():
        versions = sorted((d for d in p.iterdir() if d.name.isdigit() and is_version_dir(d)), key=lambda d: int(d.name))
        hint = f"; it holds export versions {', '.join(d.name for d in versions)}: pass one, e.g. {versions[-1]}" if versions else ""
        raise TfcnnError(
            f"{str(p)!r} is neither a run directory (no {config.name}) nor an export version directory "
            f"(no {CONTRACT} + {CARD}){hint}"
        )
    Run.open(p, need=("config", "data", "model"))
    if format is not None:
        raise TfcnnError(
            f"format {format!r} picks an artifact of an export version, but {str(p)!r} is a run directory "
            f"(predicted with its Keras model); pass export/<name>/<version> to use {format}"
        )
    return "run", None


def _labels(vd: Path, contract: dict[str, Any]) -> list[str]:
    path = vd / LABELS
    if not path.is_file():
        raise TfcnnError(f"{path} is missing; re-export the run with `tfcnn export RUN_DIR`")
    labels = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    n = (contract.get("output") or {}).get("num_classes")
    if n is not None and n != len(labels):
        raise TfcnnError(f"{path} has {len(labels)} labels but {CONTRACT} says {n} classes; re-export the run")
    return labels


def _check_files(vd: Path, fmt: str) -> None:
    """The chosen artifact's files match the model card (a damaged file never reaches a native runtime)."""
    from tfcnn.export.card import check_integrity

    card = read_json(vd / CARD, what="the model card", fix="re-export the run with `tfcnn export RUN_DIR`")
    rows = [r for r in card.get("artifacts", []) if r.get("format") in (fmt, "labels", "contract")]
    problems = check_integrity(vd, rows, whole_version=False)
    if problems:
        p = problems[0]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise TfcnnError(f"{vd / p['file']}: {p['problem']}{more}; re-export, or run `tfcnn verify {vd}`")


def predict_version(
    version_dir: "Path | str",
    images: Sequence["Path | str"],
    *,
    format: str | None = None,
    top_k: int = 3,
    batch_size: int = BATCH_SIZE,
    threads: int | None = None,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Top-k rows for each image file with one artifact of an export version (see :func:`choose_format`);
    the rows are :func:`tfcnn.prediction.predict_images`'s, an unreadable file is an error row."""
    vd = Path(version_dir)
    contract = _contract(vd)
    kind = contract.get("output", {}).get("kind", "probabilities")
    if kind != "probabilities":
        raise TfcnnError(
            f"tfcnn predict gives class labels, but {vd} returns {kind} ({', '.join(contract['output'].get('tensors', [])) or '?'}); "
            "call its artifacts directly (contract.json names the tensors)"
        )
    name = choose_format(vd, format)
    labels = _labels(vd, contract)
    height, width = int(contract["input"]["height"]), int(contract["input"]["width"])
    fit = contract["input"].get("fit", "stretch")  # contracts before export.fit all stretched
    _check_files(vd, name)
    entry = contract["artifacts"][name]
    try:
        runner = FORMATS[name].runner(vd, entry, threads or os.cpu_count() or 1)
    except TfcnnError:
        raise
    except Exception as exc:  # a runtime that is missing or refuses the file: one line, not a traceback
        raise TfcnnError(f"cannot load the {name} artifact {vd / entry.get('file', '.')}: {type(exc).__name__}: {first_line(exc)}") from None

    def scores(batch: np.ndarray) -> np.ndarray:
        probs = np.asarray(runner.predict(np.ascontiguousarray(batch)), dtype=np.float32)
        if probs.shape != (len(batch), len(labels)):
            raise TfcnnError(f"{name} returned scores of shape {probs.shape}, expected ({len(batch)}, {len(labels)})")
        return probs

    return classify(
        images,
        load=lambda p: load_image(p, size=(height, width), channels=3, fit=fit),
        scores=scores,
        labels=labels,
        top_k=top_k,
        batch_size=batch_size,
        what=name,
        progress=progress,
    )
