"""The export-format record and the registry every export stage iterates.

One record per format says everything the exporter, verify, benchmark, the model card, config
validation and the CLI help need: the files it writes, what it needs built first (a mobile
wrapper, representative data, the serving SavedModel), how to build it, its contract/card
entry, how to run it, and its default pass limits. None of those stages names a format, so
adding one is one module in this package (like Ultralytics' single export table,
``ultralytics/engine/exporter.py``, but with the runner and limits in the same record).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from tfcnn.errors import ConfigError, ExportError
from tfcnn.util import Registry


class Runner(Protocol):
    """Runs one artifact the way its clients do: uint8 RGB NHWC in, task scores out."""

    threads: int

    def predict(self, images: np.ndarray) -> np.ndarray: ...

    def one(self, image: np.ndarray) -> Callable[[], object]:
        """A zero-argument call running one image at batch 1 (what latency is measured on)."""
        ...


@dataclass
class BuildContext:
    """What a format's build function gets: the model and everything decided about the version."""

    model: Any  # the trained Keras model (logits out)
    geometry: Any  # export.wrapper.Geometry
    labels: list[str]
    out: Path  # the version directory being built (a temp dir until published)
    scratch: Path  # temp files that are not part of the version (deleted before publishing)
    name: str
    version: int
    cfg: Any  # the run's PipelineConfig
    task: Any  # tfcnn.tasks.Task
    contract_input: dict[str, Any]
    description: str
    input_text: str
    run: Any  # tfcnn.run.Run the model came from (its data bundle is shared through run.memo)
    native: Any = None  # export.isolate.NativeWorker: run native converters with native.call(fn, ...)
    prerequisites: dict[str, Any] = field(default_factory=dict)  # name -> value, filled by the exporter
    built: dict[str, dict[str, Any]] = field(default_factory=dict)  # format -> its contract entry so far

    @property
    def ecfg(self) -> Any:
        return self.cfg.export

    def call_native(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a native converter (C++ that can crash) in the export's child process."""
        if self.native is None:
            return fn(*args, **kwargs)
        return self.native.call(fn, *args, **kwargs)

    def need(self, name: str) -> Any:
        if name not in self.prerequisites:
            raise ExportError(f"prerequisite {name!r} was not built; the format must list it in `needs`")
        return self.prerequisites[name]


@dataclass(frozen=True)
class Prerequisite:
    """Something several formats need, built once per export before them (one progress line)."""

    name: str
    step: str  # the progress line's name
    build: Callable[[BuildContext], Any]
    detail: Callable[[Any], str] = lambda value: ""


@dataclass(frozen=True)
class ExportFormat:
    """One export format."""

    name: str  # the `export.formats` / `--formats` name
    summary: str  # one line for the CLI help and the docs
    files: tuple[str, ...]  # glob patterns (relative to the version dir) of the files it owns
    build: Callable[[BuildContext], dict[str, Any]]  # writes its files into ctx.out, returns its contract entry
    runner: Callable[[Path, dict[str, Any], int], Runner] | None  # (version_dir, entry, threads) -> Runner
    thresholds: Callable[[dict[str, Any]], dict[str, float]]  # contract entry -> default limits
    needs: tuple[str, ...] = ()  # prerequisites (PREREQUISITES names) or other formats' names
    tasks: tuple[str, ...] = ("classification",)  # tasks it can export
    default: bool = True  # part of the default `export.formats`
    order: int = 100  # build/report order (lower first)
    cannot_run: Callable[[], str | None] = lambda: None  # why predictions cannot run on this machine
    static_check: Callable[[Path, dict[str, Any], dict[str, Any]], list[str]] | None = None  # (vd, entry, card)
    # external clients and second runtimes (MediaPipe Tasks, OpenVINO): each a callable
    # (file, images, this format's outputs, labels) -> result dict or None, named by its `client`
    client_checks: tuple[Callable[..., dict[str, Any] | None], ...] = ()
    changes_key: str | None = None  # verification.json key listing test images whose top-1 changed
    card_settings: Callable[[BuildContext], dict[str, Any]] = lambda ctx: {}
    limit_keys: tuple[str, ...] = ("max_abs_diff", "agreement", "max_accuracy_drop")

    def owns(self, rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, pat) for pat in self.files)


PRIMARY_OUTPUT = "probabilities"


def runner_result(named: dict[str, np.ndarray]) -> "np.ndarray | dict[str, np.ndarray]":
    """What a runner's ``predict`` returns from an artifact's named outputs: a classifier's
    probabilities (what verify and predict compare), or, for an artifact without them (another
    task, e.g. reconstruction), every numeric output by name for the task's ``compare``."""
    if PRIMARY_OUTPUT in named:
        return named[PRIMARY_OUTPUT]
    return {k: v for k, v in named.items() if np.asarray(v).dtype.kind in "fiub"}


FORMATS: Registry = Registry("export format", "export.formats")
PREREQUISITES: Registry = Registry("export prerequisite", "export prerequisite")


def register(fmt: ExportFormat) -> ExportFormat:
    return FORMATS.register(fmt.name, fmt)


def client_of(check: Callable[..., Any]) -> str:
    """The client a check exercises ("mediapipe", "openvino"): its ``client`` attribute (a
    functools.partial's function's), which names its section in verification.json and its
    ``--skip-<client>`` flag."""
    name = getattr(check, "client", None) or getattr(getattr(check, "func", None), "client", None)
    if not name:
        raise ExportError(f"client check {check!r} has no `client` name; give the function a `client` attribute")
    return str(name)


def client_names() -> list[str]:
    """Every client some registered format checks with (the CLI's --skip-<client> flags)."""
    return sorted({client_of(c) for f in FORMATS.values() for c in f.client_checks})


def check_skip_clients(skip: Sequence[str]) -> None:
    """`export.skip_clients` names clients some format checks with (one error line otherwise)."""
    known = client_names()
    for name in skip:
        if name not in known:
            raise ConfigError(f"export.skip_clients: {name!r} is not a client check; choose from {', '.join(known)}")


def ordered() -> list[ExportFormat]:
    return sorted(FORMATS.values(), key=lambda f: (f.order, f.name))


def names() -> list[str]:
    return [f.name for f in ordered()]


def default_formats(task: str = "classification") -> list[str]:
    return [f.name for f in ordered() if f.default and task in f.tasks]


def check_formats(formats: Sequence[str] | None, task: str = "classification", *, error: type[Exception] = ExportError) -> list[str]:
    """Canonical order, no duplicates; an unknown or task-incompatible name is one error line."""
    chosen = default_formats(task) if formats is None else list(formats)
    if not chosen:
        raise error(f"no export formats selected; choose from {', '.join(names())}")
    for f in chosen:
        if f not in FORMATS:
            raise error(FORMATS.unknown_message(f))
        if task not in FORMATS[f].tasks:
            raise error(f"export format {f!r} cannot export a {task} model; it supports {', '.join(FORMATS[f].tasks)}")
    return [f.name for f in ordered() if f.name in chosen]


def owner_of(rel: str) -> str:
    """The format a version file belongs to (model card rows); shared files are labels/contract/other."""
    for f in ordered():
        if f.owns(rel):
            return f.name
    return {"labels.txt": "labels", "contract.json": "contract"}.get(rel, "other")


def thresholds_for(fmt: str, entry: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, float]:
    """A format's default limits (from its module) with the run's `export.thresholds.<fmt>` on top."""
    limits = dict(FORMATS[fmt].thresholds(entry))
    limits.update((overrides or {}).get(fmt, {}))
    return limits


def check_threshold_overrides(overrides: dict[str, Any], extra_keys: Sequence[str] = ()) -> None:
    """`export.thresholds` must name registered formats and their limit keys (or the task's,
    ``extra_keys``), with numbers in range."""
    import math

    for fmt, limits in overrides.items():
        if fmt not in FORMATS:
            raise ConfigError(FORMATS.unknown_message(fmt).replace("export.formats", "export.thresholds key"))
        if not isinstance(limits, dict):
            raise ConfigError(f"export.thresholds.{fmt} must be a table such as {{agreement = 0.99}}, got {limits!r}")
        allowed = tuple(FORMATS[fmt].limit_keys) + tuple(k for k in extra_keys if k not in FORMATS[fmt].limit_keys)
        for key, value in limits.items():
            where = f"export.thresholds.{fmt}.{key}"
            if key not in allowed:
                raise ConfigError(f"{where} is not a limit of {fmt}; allowed: {', '.join(allowed)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{where} must be a finite number, got {value!r}")
            if key in ("agreement", "flag_agreement") and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{where} = {value!r} is impossible; it must be within [0, 1]")
            if value < 0:
                raise ConfigError(f"{where} = {value!r} is impossible; it must be >= 0")
