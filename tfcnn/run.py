"""The run directory, behind one object: the only code that knows what a run's files are called.

Every stage hands off through a run directory (``tfcnn evaluate RUN_DIR``, ``tfcnn export
RUN_DIR`` and ``tfcnn report RUN_DIR`` each re-run one stage), so its layout is a contract. This
module owns that contract: :class:`Run` maps each kind of file to its path, and each JSON file
a stage writes is a typed :class:`Record` with one layout, a ``schema`` version and one reader.

Within one process a :class:`Run` also carries what is expensive to rebuild (the decoded data
bundle), so train, int8 calibration, verify and the report share one copy
(:meth:`Run.memo`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

from tfcnn import config as config_mod
from tfcnn.config import PipelineConfig
from tfcnn.errors import TfcnnError
from tfcnn.util import ensure_dir, read_json, write_json, write_text

# What each file of a run directory is (kind -> name relative to the run root). Readers and
# writers ask the Run for a kind; no other module spells these names.
FILES: dict[str, str] = {
    "config": "config.json",  # the resolved PipelineConfig
    "data": "data.json",  # DataInfo: class names, input shape, mean/std, split sizes, skipped files
    "model": "model.keras",  # the trained Keras model (logits out, normalization inside)
    "history": "history.csv",  # one row per epoch
    "metrics": "metrics.json",  # Metrics record: test scores and the training summary
    "evaluation": "evaluation.json",  # Evaluation record: per-class table, confusion matrix, calibration
    "predictions": "predictions.npz",  # test-split outputs in test order (probs, labels, predicted)
    "embedding": "embedding.npz",  # penultimate-layer projections of a test sample
    "diagnostics": "diagnostics.json",  # Diagnostics record: stop epoch, lr, gradient norms
    "inspect": "inspect.json",  # per-layer shapes, params, MACs, receptive fields
    "summary": "summary.json",  # RunSummary record of one `tfcnn run`
    "exports": "exports.json",  # export version directories made from this run
    "lr_find": "lr_find.json",  # LRFind record of `tfcnn lr-find` (loss against learning rate)
    "report": "report.html",
    "fit_state": "checkpoints/fit_state.json",  # fit engine's resume state
    "best_weights": "checkpoints/best_weights.npz",  # fit engine's best epoch so far
    "last_weights": "checkpoints/last.weights.h5",  # fit engine's ModelCheckpoint of the last epoch
}
DIRS: dict[str, str] = {
    "checkpoints": "checkpoints",
    "fit_backup": "checkpoints/backup",  # fit engine's BackupAndRestore state (removed when a fit finishes)
    "tensorboard": "tensorboard",
    "plots": "plots",  # PNG figures rendered by vis
    "explain": "explain",  # `tfcnn explain` output
}
# Which command writes each kind, for the "is missing" line.
_MADE_BY = {
    "metrics": "tfcnn run PIPELINE (or tfcnn evaluate RUN_DIR)",
    "evaluation": "tfcnn evaluate RUN_DIR",
    "predictions": "tfcnn evaluate RUN_DIR",
    "embedding": "tfcnn evaluate RUN_DIR",
    "inspect": "tfcnn inspect RUN_DIR",
    "report": "tfcnn report RUN_DIR",
}

R = TypeVar("R", bound="Record")


class Run:
    """One run directory: its paths, its typed records, and a per-process memo of shared data."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._memo: dict[str, Any] = {}
        self._config: PipelineConfig | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    # ---------------------------------------------------------------- opening
    @classmethod
    def create(cls, root: Path) -> "Run":
        """A run directory to write into (made if missing), refused in one line when it cannot
        be written, before any data is loaded (a probe file is created and removed: permission
        bits alone do not tell, e.g. for root or on a read-only mount)."""
        try:
            ensure_dir(Path(root))
            fd, probe = tempfile.mkstemp(dir=root, prefix=".tfcnn-write-test-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise TfcnnError(
                f"run directory {str(root)!r} cannot be written ({exc.strerror or exc}); "
                "choose another --out directory or fix its permissions"
            ) from None
        return cls(Path(root))

    @classmethod
    def open(cls, root: "Path | str | Run", *, need: tuple[str, ...] = ("config", "data")) -> "Run":
        """An existing run, with one clear line when ``root`` is not one (or lacks ``need``)."""
        if isinstance(root, Run):
            root.require(*need)
            return root
        path = Path(root)
        if not path.is_dir():
            raise TfcnnError(
                f"run directory {str(path)!r} does not exist; pass a directory made by `tfcnn run PIPELINE` (runs/<name>)"
            )
        if not (path / FILES["config"]).is_file():
            raise TfcnnError(
                f"{str(path)!r} is not a tfcnn run directory (no {FILES['config']}); "
                "pass a directory made by `tfcnn run PIPELINE` (runs/<name>)"
            )
        run = cls(path)
        run.require(*need)
        return run

    # ---------------------------------------------------------------- paths
    def path(self, kind: str) -> Path:
        """The path of one kind of file or directory (see FILES and DIRS)."""
        if kind in FILES:
            return self.root / FILES[kind]
        if kind in DIRS:
            return self.root / DIRS[kind]
        raise KeyError(f"a run directory has no {kind!r}; kinds: {', '.join([*FILES, *DIRS])}")

    def has(self, kind: str) -> bool:
        return self.path(kind).exists()

    def dir(self, kind: str) -> Path:
        """A run subdirectory, created on first use."""
        return ensure_dir(self.path(kind))

    def require(self, *kinds: str) -> None:
        """Fail with one line naming the first missing file and the command that makes it."""
        for kind in kinds:
            p = self.path(kind)
            if not p.exists():
                how = _MADE_BY.get(kind, f"tfcnn run PIPELINE --out {self.root}")
                raise TfcnnError(f"{p} is missing; run `{how}` first")

    # ---------------------------------------------------------------- config
    def save_config(self, cfg: PipelineConfig) -> None:
        write_json(self.path("config"), config_mod.to_dict(cfg))
        self._config = cfg

    def use_config(self, cfg: PipelineConfig) -> "Run":
        """Work with ``cfg`` in this process without writing config.json: for tools such as
        ``tfcnn lr-find`` that read a pipeline's data into a directory they must not claim (a
        later ``tfcnn run`` with other settings would be refused as a rerun)."""
        self._config = cfg
        self.forget("data_bundle")
        return self

    def config(self) -> PipelineConfig:
        """The run's resolved config (config.json), read once per Run."""
        if self._config is None:
            self.require("config")
            self._config = config_mod.load_json(self.path("config"))
        return self._config

    # ---------------------------------------------------------------- records
    def write(self, record: "Record") -> Path:
        """Write a typed record to its file (atomically)."""
        path = self.path(record.KIND)
        write_json(path, record.to_dict())
        return path

    def read(self, cls: type[R]) -> R:
        """Read a typed record; a missing or foreign file is one clear line."""
        self.require(cls.KIND)
        path = self.path(cls.KIND)
        return cls.from_dict(read_json(path), where=path)

    def read_optional(self, cls: type[R]) -> R | None:
        return self.read(cls) if self.has(cls.KIND) else None

    def write_json(self, kind: str, payload: Any) -> Path:
        """Write a free-form JSON file of the run (only for kinds without a record, e.g. inspect)."""
        path = self.path(kind)
        write_json(path, payload)
        return path

    def read_json(self, kind: str) -> Any:
        self.require(kind)
        return read_json(self.path(kind))

    # ---------------------------------------------------------------- history.csv
    def write_history(self, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> Path:
        buf = io.StringIO()
        buf.write(",".join(columns) + "\n")
        for r in rows:
            buf.write(",".join(_csv_cell(r.get(k)) for k in columns) + "\n")
        path = self.path("history")
        write_text(path, buf.getvalue())
        return path

    def read_history(self) -> dict[str, list[float]]:
        """history.csv as column -> floats (blank cells NaN); empty when the run has none yet."""
        path = self.path("history")
        if not path.is_file():
            return {}
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        cols: dict[str, list[float]] = {}
        for row in rows:
            for key, value in row.items():
                if key is None:
                    continue
                try:
                    v = float(value) if value not in (None, "") else math.nan
                except ValueError:
                    continue
                cols.setdefault(key.strip(), []).append(v)
        return {k: v for k, v in cols.items() if len(v) == len(rows)}

    # ---------------------------------------------------------------- exports.json
    def exports(self) -> list[str]:
        """Export version directories made from this run, oldest first."""
        if not self.has("exports"):
            return []
        entries = read_json(self.path("exports"))
        return [str(e) for e in entries] if isinstance(entries, list) else []

    def record_export(self, version_dir: Path) -> None:
        path = str(Path(version_dir).resolve())
        write_json(self.path("exports"), [e for e in self.exports() if e != path] + [path])

    # ---------------------------------------------------------------- memo
    def memo(self, key: str, factory: Callable[[], Any]) -> Any:
        """Build ``factory()`` once per Run and share it (the decoded data bundle, the model)."""
        if key not in self._memo:
            self._memo[key] = factory()
        return self._memo[key]

    def forget(self, key: str) -> None:
        self._memo.pop(key, None)


def as_run(run: "Run | Path | str", *, need: tuple[str, ...] = ("config", "data")) -> Run:
    """Accept a Run or a path (what every stage's entry point takes)."""
    return Run.open(run, need=need)


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "" if math.isnan(f) else repr(f)


# ==================================================================== typed records


@dataclass
class Record:
    """A JSON file of the run with one layout: declared fields plus a ``schema`` version.

    ``from_dict`` accepts exactly this layout (a file written by another schema is one clear
    error, not a best-effort guess); keys a newer minor writer added are kept in ``extra`` and
    written back unchanged.
    """

    KIND: ClassVar[str] = ""
    SCHEMA: ClassVar[str] = ""

    extra: dict[str, Any] = field(default_factory=dict, repr=False, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d = _plain({**self.extra, **d})
        d["schema"] = self.SCHEMA
        return d

    @classmethod
    def from_dict(cls: type[R], d: dict[str, Any], *, where: Any = None) -> R:
        where = where or cls.KIND
        if not isinstance(d, dict):
            raise TfcnnError(f"{where}: expected a JSON object, got {type(d).__name__}")
        schema = d.get("schema")
        if schema != cls.SCHEMA:
            raise TfcnnError(
                f"{where}: schema {schema!r}, this tfcnn reads {cls.SCHEMA!r}; re-run the stage that writes it"
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name != "extra" and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [k for k in required if k not in d]
        if missing:
            raise TfcnnError(f"{where}: missing {', '.join(missing)}; re-run the stage that writes it")
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k != "schema"}
        return cls(**known, extra=extra)


def _plain(obj: Any) -> Any:
    """JSON has no NaN or infinity: a missing value (no validation split, ...) is written as null."""
    if isinstance(obj, float) or type(obj).__name__ in ("float32", "float16"):  # numpy floats too
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


@dataclass
class Metrics(Record):
    """metrics.json: the task's test scores (flat, e.g. test_accuracy) and the training summary."""

    KIND: ClassVar[str] = "metrics"
    SCHEMA: ClassVar[str] = "tfcnn.metrics/1"

    task: str = "classification"
    model: str = ""
    params: int = 0
    engine: str = ""
    strategy: str = ""
    replicas: int = 1
    train_seconds: float = 0.0
    epochs_run: int = 0
    best_epoch: int | None = None
    stop_reason: str | None = None
    images_per_second: float = 0.0
    skipped_files: int = 0
    scores: dict[str, Any] = field(default_factory=dict)  # written flat: test_loss, test_accuracy, ...

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        scores = d.pop("scores")
        return {**scores, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: Any = None) -> "Metrics":
        rec = super().from_dict(d, where=where)
        rec.scores = {**rec.scores, **rec.extra}  # flat score keys land in extra on the way in
        rec.extra = {}
        return rec

    def get(self, key: str, default: Any = None) -> Any:
        """Any metrics.json key (scores and summary alike), the way the card and report read them."""
        d = self.to_dict()
        return d.get(key, default)


@dataclass
class Evaluation(Record):
    """evaluation.json: what the task's evaluation computed on the test split (numbers only)."""

    KIND: ClassVar[str] = "evaluation"
    SCHEMA: ClassVar[str] = "tfcnn.evaluation/1"

    task: str = "classification"
    num_test: int = 0
    headline: dict[str, Any] = field(default_factory=dict)  # the scores copied into metrics.json
    details: dict[str, Any] = field(default_factory=dict)  # task-specific tables (per class, confusion, ...)
    files: dict[str, str] = field(default_factory=dict)  # kind -> path relative to the run
    unavailable: dict[str, str] = field(default_factory=dict)  # figure key -> why it cannot be drawn

    def to_dict(self) -> dict[str, Any]:
        """The file keeps its flat layout (per_class, confusion_matrix, test_accuracy, ... at the top,
        as the report reads them); ``headline`` is also kept whole, so reading it back is exact."""
        d = super().to_dict()
        details = d.pop("details")
        return {**details, **d["headline"], **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: Any = None) -> "Evaluation":
        rec = super().from_dict(d, where=where)
        rec.details = {k: v for k, v in rec.extra.items() if k not in rec.headline}  # flat keys land in extra
        rec.extra = {}
        return rec


@dataclass
class Diagnostics(Record):
    """diagnostics.json: how training went, one layout for both engines.

    ``gradient_norms`` is ``{layer: [norm per epoch]}`` plus ``"global"`` (the whole model), one
    value per history row (null for epochs without a value), or None when the engine recorded
    none (the fit engine).
    """

    KIND: ClassVar[str] = "diagnostics"
    SCHEMA: ClassVar[str] = "tfcnn.diagnostics/1"

    engine: str = ""
    strategy: str = ""
    replicas: int = 1
    precision_policy: str = "float32"
    epochs_run: int = 0
    best_epoch: int | None = None
    stopped_epoch: int | None = None
    stop_reason: str | None = None
    lr: list[float | None] = field(default_factory=list)
    epoch_seconds: list[float | None] = field(default_factory=list)
    gradient_norms: dict[str, Any] | None = None
    resumed_at: list[int] = field(default_factory=list)
    images_per_second: float = 0.0


@dataclass
class Verification(Record):
    """verification.json of an export version (written beside the artifacts, not in the run)."""

    KIND: ClassVar[str] = "verification"
    SCHEMA: ClassVar[str] = "tfcnn.verification/1"

    version_dir: str = ""
    verified: str = ""
    task: str = "classification"
    reference: dict[str, Any] = field(default_factory=dict)
    samples: int = 0
    threads: int = 1
    latency_runs: int = 0
    keras: dict[str, Any] = field(default_factory=dict)
    formats: dict[str, dict[str, Any]] = field(default_factory=dict)
    integrity: list[dict[str, Any]] = field(default_factory=list)
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. MediaPipe per variant
    passed: bool = False
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["mediapipe"] = d.pop("clients")  # the published file calls the client checks "mediapipe"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: Any = None) -> "Verification":
        d = dict(d)
        if "mediapipe" in d:
            d["clients"] = d.pop("mediapipe")
        return super().from_dict(d, where=where)


@dataclass
class LRFind(Record):
    """lr_find.json: an LR range test (``tfcnn lr-find``): the loss at each step as the learning
    rate grows geometrically, and the rate it suggests."""

    KIND: ClassVar[str] = "lr_find"
    SCHEMA: ClassVar[str] = "tfcnn.lr_find/1"

    start_lr: float = 0.0
    end_lr: float = 0.0
    steps: int = 0
    lr: list[float] = field(default_factory=list)  # one per step run
    loss: list[float | None] = field(default_factory=list)  # raw training loss per step (None: non-finite)
    smoothed: list[float | None] = field(default_factory=list)  # bias-corrected EMA of the loss
    suggested_lr: float | None = None  # steepest descent of the smoothed loss (per log10 of lr)
    min_loss_lr: float | None = None  # where the smoothed loss was lowest
    stopped: str = ""  # why it ended: "diverged" (4x the best smoothed loss), "non-finite", or "completed"
    model: str = ""
    optimizer: str = ""
    batch_size: int = 0
    seconds: float = 0.0


@dataclass
class RunSummary(Record):
    """summary.json: what one `tfcnn run` did, end to end (the table `make demo` ends with)."""

    KIND: ClassVar[str] = "summary"
    SCHEMA: ClassVar[str] = "tfcnn.summary/1"

    run_dir: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    export: str | None = None
    verification: dict[str, Any] | None = None
    report: str | None = None
    wall_seconds: float = 0.0
