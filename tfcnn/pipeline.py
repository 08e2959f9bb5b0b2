"""The whole job in one direction: config -> data -> model -> train -> evaluate -> export -> verify -> report.

Each stage only reads what earlier stages left in the run directory, so this module is just
the order of calls plus the final results table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tfcnn import config as config_mod
from tfcnn.config import PipelineConfig
from tfcnn.errors import TfcnnError
from tfcnn.rundir import RunDir, read_json, write_json


def default_run_dir(cfg: PipelineConfig) -> Path:
    return Path(cfg.out_dir) if cfg.out_dir else Path("runs") / cfg.name


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(f"[tfcnn] {msg}", flush=True)


def train_stage(cfg: PipelineConfig, run_dir: Path, *, quiet: bool = False) -> dict[str, Any]:
    """Data, model, training and evaluation; writes everything `tfcnn export` needs."""
    import keras

    from tfcnn.data import load_data
    from tfcnn.evaluate import evaluate, evaluate_options
    from tfcnn.models import build_model
    from tfcnn.train import train

    from tfcnn.models import available

    if cfg.model.name not in available():  # fail before minutes of data loading
        raise TfcnnError(f"model.name = {cfg.model.name!r} is not a registered model; choose one of {', '.join(available())}")
    rd = RunDir(Path(run_dir))
    rd.root.mkdir(parents=True, exist_ok=True)
    config_mod.save(cfg, rd.config)
    keras.utils.set_random_seed(cfg.train.seed)

    _say(quiet, f"data: loading {cfg.data.source}")
    bundle = load_data(cfg.data)
    info = bundle.info
    info.save(rd.data)
    _say(
        quiet,
        f"data: {info.num_train} train / {info.num_val} val / {info.num_test} test, "
        f"{info.num_classes} classes, input {'x'.join(map(str, info.input_shape))}"
        + (f", {len(info.skipped)} unreadable files skipped" if info.skipped else ""),
    )

    def build() -> keras.Model:
        return build_model(cfg.model, info.input_shape, info.num_classes, info.mean, info.std)

    _say(quiet, f"train: {cfg.model.name} with the {cfg.train.engine} engine, up to {cfg.train.epochs} epochs")
    result = train(cfg, bundle, rd.root, build, quiet=quiet)
    _say(quiet, f"evaluate: {info.num_test} test images")
    metrics = evaluate(result.model, bundle, rd.root, quiet=quiet, **evaluate_options(cfg.evaluate))
    summary = {
        **metrics,
        "params": int(result.model.count_params()),
        "train_seconds": round(result.train_seconds, 2),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "images_per_second": round(result.images_per_second, 1),
        "engine": result.engine,
        "strategy": result.strategy,
        "replicas": result.replicas,
        "model": cfg.model.name,
        "skipped_files": len(info.skipped),
    }
    write_json(rd.metrics, summary)
    return summary


def export_stage(cfg: PipelineConfig, run_dir: Path, *, quiet: bool = False) -> tuple[Path, dict | None]:
    """Export the run's model into the model repository and verify every artifact."""
    from tfcnn.export import export_run, verify_version

    version_dir = export_run(
        Path(run_dir),
        formats=cfg.export.formats,
        name=cfg.export.name or cfg.name,
        root=Path(cfg.export.root),
        quiet=quiet,
    )
    verification = None
    if cfg.export.verify:
        verification = verify_version(version_dir, samples=cfg.export.verify_samples, quiet=quiet)
    return version_dir, verification


def run_pipeline(cfg: PipelineConfig, run_dir: Path | None = None, *, export: bool | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run every enabled stage and return a summary (also printed as a table unless quiet)."""
    started = time.perf_counter()
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    summary: dict[str, Any] = {"run_dir": str(run_dir)}
    summary["metrics"] = train_stage(cfg, run_dir, quiet=quiet)
    do_export = cfg.export.enabled if export is None else export
    if do_export:
        version_dir, verification = export_stage(cfg, run_dir, quiet=quiet)
        summary["export"] = str(version_dir)
        summary["verification"] = verification
    if cfg.report:
        from tfcnn.vis.report import build_report

        summary["report"] = str(build_report(run_dir))
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_json(RunDir(run_dir).root / "summary.json", summary)
    if not quiet:
        print(format_summary(summary))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The results table `make demo` ends with: training figures, then one row per exported format."""
    m = summary["metrics"]
    lines = [
        "",
        f"run: {summary['run_dir']}",
        f"  model {m['model']} ({m['params']:,} params), engine {m['engine']}, strategy {m['strategy']} x{m['replicas']}",
        f"  test accuracy {100 * m['test_accuracy']:.2f}%  test loss {m['test_loss']:.4f}  "
        f"epochs {m['epochs_run']} (best {m['best_epoch']}, {m['stop_reason']})",
        f"  train {m['train_seconds']:.1f} s at {m['images_per_second']:.0f} img/s; whole run {summary['wall_seconds']:.1f} s",
    ]
    ver = summary.get("verification")
    if ver:
        lines.append(f"export: {summary['export']}")
        header = f"  {'format':<16}{'size':>10}{'accuracy':>10}{'agree':>9}{'max|dp|':>10}{'p50 ms':>8}{'p95 ms':>8}  ok"
        lines.append(header)
        keras_acc = ver.get("keras", {}).get("accuracy")
        if keras_acc is not None:
            lines.append(f"  {'keras (ref)':<16}{'':>10}{100 * keras_acc:>9.2f}%")
        for fmt, row in ver.get("formats", {}).items():
            lines.append(_format_row(fmt, row))
    elif summary.get("export"):
        lines.append(f"export: {summary['export']} (not verified)")
    if summary.get("report"):
        lines.append(f"report: {summary['report']}")
    return "\n".join(lines)


def _format_row(fmt: str, row: dict[str, Any]) -> str:
    def num(key: str, scale: float = 1.0, spec: str = ".2f") -> str:
        v = row.get(key)
        return "-" if v is None else format(v * scale, spec)

    size = row.get("bytes")
    size_s = "-" if size is None else (f"{size / 1024:.0f} KB" if size < 2**20 else f"{size / 2**20:.1f} MB")
    ok = {True: "yes", False: "NO"}.get(row.get("passed"), "-")

    def pct(key: str) -> str:
        return "-" if row.get(key) is None else f"{100 * row[key]:.2f}%"

    return (
        f"  {fmt:<16}{size_s:>10}{pct('accuracy'):>10}{pct('agreement'):>9}"
        f"{num('max_abs_diff', 1, '.1e'):>10}{num('latency_ms_median'):>8}{num('latency_ms_p95'):>8}  {ok}"
    )


def load_run(run_dir: Path) -> tuple[PipelineConfig, Any]:
    """Reload a run's config and data description, with one clear error if it is not a run."""
    rd = RunDir(Path(run_dir))
    if not rd.root.is_dir():
        raise TfcnnError(f"run directory {str(rd.root)!r} does not exist")
    rd.require(rd.config, rd.data)
    from tfcnn.data.info import DataInfo

    return config_mod.load_json(rd.config), DataInfo.load(rd.data)


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return read_json(RunDir(Path(run_dir)).metrics)
