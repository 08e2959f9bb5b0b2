"""The whole job in one direction: config -> data -> model -> train -> evaluate -> export -> verify -> report.

This module and the CLI are the only ones that know every stage. One :class:`~tfcnn.run.Run`
travels through all of them, so the data set is decoded once per process (train, int8
calibration, verify and the report share it) and every file goes through the Run's records.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tfcnn import config as config_mod
from tfcnn.config import PipelineConfig
from tfcnn.run import Metrics, Run, RunSummary
from tfcnn.util import format_bytes, log


def validate(cfg: PipelineConfig) -> PipelineConfig:
    """Every registry's no-I/O checks (data source, model and options, task, monitor, export formats).

    Runs in the first second of `tfcnn run`, before any data is loaded, so a typo in
    ``export.formats`` or ``model.options`` costs nothing.
    """
    import tfcnn.data  # noqa: F401  (each import registers its package's config check)
    import tfcnn.export  # noqa: F401
    import tfcnn.models  # noqa: F401
    import tfcnn.tasks  # noqa: F401
    import tfcnn.train  # noqa: F401

    return config_mod.validate(cfg)


def default_run_dir(cfg: PipelineConfig) -> Path:
    return Path(cfg.out_dir) if cfg.out_dir else Path("runs") / cfg.name


def _worker_run(cfg: PipelineConfig, run: Run) -> Run:
    """``run`` itself, or for a multi-worker cluster's non-chief a scratch Run: every worker
    decodes the data and trains, but only the chief writes the run directory (which may be one
    shared file system), and only the chief exports and reports."""
    from tfcnn.train.distribute import start_strategy, worker_scratch

    if is_chief_process(cfg):
        return run
    scratch = Run.create(worker_scratch(run.root, start_strategy(cfg.train)))
    log.info("train: this worker is not the chief: it writes to %s; the chief writes %s", scratch.root, run.root)
    return scratch


def is_chief_process(cfg: PipelineConfig) -> bool:
    """False only on a multi-worker cluster's non-chief workers (they neither export nor report)."""
    from tfcnn.train.distribute import is_chief, start_strategy

    strategy = start_strategy(cfg.train)
    return strategy is None or is_chief(strategy)


def train_stage(cfg: PipelineConfig, run: Run | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Data, model, training and evaluation; writes everything `tfcnn export` needs.

    A run directory that already holds a run made with other settings (or another engine) is
    refused, naming the setting, unless ``overwrite`` (then its checkpoints are cleared).
    """
    import keras

    from tfcnn.data import bundle_for
    from tfcnn.evaluate import evaluate, evaluate_options
    from tfcnn.models import build_model
    from tfcnn.train import train

    from tfcnn.train.core import check_rerun

    validate(cfg)
    run = run if isinstance(run, Run) else Run.create(Path(run))
    run = _worker_run(cfg, run)  # a multi-worker strategy starts here, before any TensorFlow op
    if not overwrite:
        check_rerun(run, cfg)  # before config.json is replaced or any data is decoded
    run.save_config(cfg)
    keras.utils.set_random_seed(cfg.train.seed)

    log.info("data: loading %s", cfg.data.source)
    bundle = bundle_for(run)
    info = bundle.info
    run.write(info)
    log.info(
        "data: %d train / %d val / %d test, %d classes, input %s%s",
        info.num_train, info.num_val, info.num_test, info.num_classes, "x".join(map(str, info.input_shape)),
        f", {len(info.skipped)} unreadable files skipped" if info.skipped else "",
    )

    def build() -> keras.Model:
        return build_model(cfg.model, info.input_shape, info.num_classes, info.mean, info.std)

    log.info("train: %s with the %s engine, up to %d epochs", cfg.model.name, cfg.train.engine, cfg.train.epochs)
    result = train(cfg, bundle, run, build, overwrite=overwrite)
    log.info("evaluate: %d test images", info.num_test)
    scores = evaluate(result.model, bundle, run, **evaluate_options(cfg.evaluate))
    metrics = Metrics(
        task=cfg.task,
        model=cfg.model.name,
        params=int(result.model.count_params()),
        engine=result.engine,
        strategy=result.strategy,
        replicas=result.replicas,
        train_seconds=round(result.train_seconds, 2),
        epochs_run=result.epochs_run,
        best_epoch=result.best_epoch,
        stop_reason=result.stop_reason,
        images_per_second=round(result.images_per_second, 1),
        skipped_files=len(info.skipped),
        scores=dict(scores),
    )
    run.write(metrics)
    return metrics.to_dict()


def export_stage(cfg: PipelineConfig, run: Run | Path, skip_clients: dict[str, str] | None = None) -> tuple[Path, dict | None]:
    """Export the run's model into the model repository and verify every artifact (``skip_clients``:
    client checks the user skipped, with the reason verify records, e.g. from ``--skip-mediapipe``)."""
    from tfcnn.export import export_run, verify_version

    version_dir = export_run(run, formats=cfg.export.formats, name=cfg.export.name or cfg.name, root=Path(cfg.export.root))
    verification = None
    if cfg.export.verify:
        verification = verify_version(version_dir, samples=cfg.export.verify_samples, run=run, skip_clients=skip_clients)
    return version_dir, verification


def run_pipeline(
    cfg: PipelineConfig, run_dir: Path | None = None, *, export: bool | None = None, overwrite: bool = False,
    skip_clients: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run every enabled stage and return a summary (:func:`format_summary` makes it a table);
    ``skip_clients`` goes to verify (see :func:`export_stage`)."""
    started = time.perf_counter()
    validate(cfg)  # before anything is written or loaded
    run = Run.create(Path(run_dir) if run_dir else default_run_dir(cfg))
    summary = RunSummary(run_dir=str(run.root))
    summary.metrics = train_stage(cfg, run, overwrite=overwrite)
    if not is_chief_process(cfg):  # a non-chief worker: the chief exports, verifies and reports
        import shutil

        from tfcnn.train.distribute import start_strategy, worker_scratch

        # trained to the end: its checkpoints are needed no more (after a failure they stay, to resume)
        shutil.rmtree(worker_scratch(run.root, start_strategy(cfg.train)), ignore_errors=True)
        summary.wall_seconds = round(time.perf_counter() - started, 1)
        return summary.to_dict()
    do_export = cfg.export.enabled if export is None else export
    if do_export:
        version_dir, verification = export_stage(cfg, run, skip_clients)
        summary.export = str(version_dir)
        summary.verification = verification
    if cfg.report:
        from tfcnn.vis.report import build_report

        summary.report = str(build_report(run))
    summary.wall_seconds = round(time.perf_counter() - started, 1)
    run.write(summary)
    return summary.to_dict()


def format_summary(summary: dict[str, Any]) -> str:
    """The results table `make demo` ends with: training figures, then one row per exported format."""
    m = summary["metrics"]
    lines = [
        "",
        f"run: {summary['run_dir']}",
        f"  model {m['model']} ({m['params']:,} params), engine {m['engine']}, strategy {m['strategy']} x{m['replicas']}",
        f"  {_headline(m)}  test loss {m['test_loss']:.4f}  "
        f"epochs {m['epochs_run']} (best {m['best_epoch']}, {m['stop_reason']})",
        f"  train {m['train_seconds']:.1f} s at {m['images_per_second']:.0f} img/s; whole run {summary['wall_seconds']:.1f} s",
    ]
    ver = summary.get("verification")
    if ver:
        lines.append(f"export: {summary['export']}")
        header = f"  {'format':<16}{'size':>10}{'accuracy':>10}{'agree':>9}{'max|dp|':>10}{'p50 ms':>8}{'p95 ms':>8}  ok"
        lines.append(header)
        keras_acc = ver.get("keras", {}).get("accuracy")
        if ver.get("task", "classification") != "classification":
            lines = lines[:-1] + _task_rows(ver)
        elif keras_acc is not None:
            lines.append(f"  {'keras (ref)':<16}{'':>10}{100 * keras_acc:>9.2f}%")
        for fmt, row in ver.get("formats", {}).items() if ver.get("task", "classification") == "classification" else ():
            lines.append(_format_row(fmt, row))
    elif summary.get("export"):
        lines.append(f"export: {summary['export']} (not verified)")
    if summary.get("report"):
        lines.append(f"report: {summary['report']}")
    return "\n".join(lines)


def _headline(m: dict[str, Any]) -> str:
    """The task's headline test numbers: a classifier's accuracy, an autoencoder's PSNR (and
    denoising PSNR, ELBO, ROC-AUC when it has them)."""
    if "test_accuracy" in m:
        return f"test accuracy {100 * m['test_accuracy']:.2f}%"
    if "test_mean_iou" in m:
        return (
            f"test mean IoU {_pct(m.get('test_mean_iou'))}, foreground Dice {_pct(m.get('test_mean_dice'))}, "
            f"pixel accuracy {_pct(m.get('test_pixel_accuracy'))}"
        )
    if "test_map_50" in m:
        return f"test mAP@0.5 {_pct(m.get('test_map_50'))}, mAP@[.5:.95] {_pct(m.get('test_map'))}, AR@100 {_pct(m.get('test_ar_100'))}"
    parts = [f"test PSNR {m.get('test_psnr', float('nan')):.2f} dB"]
    if "test_psnr_noisy" in m:
        parts.append(f"(noisy input {m['test_psnr_noisy']:.2f} dB)")
    if "test_elbo" in m:
        parts.append(f"ELBO {m['test_elbo']:.1f} nats")
    if "test_roc_auc" in m:
        parts.append(f"ROC-AUC {m['test_roc_auc']:.4f}, PR-AUC {m['test_pr_auc']:.4f}")
    return " ".join(parts)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _format_row(fmt: str, row: dict[str, Any]) -> str:
    def num(key: str, spec: str = ".2f") -> str:
        v = row.get(key)
        return "-" if v is None else format(v, spec)

    def pct(key: str) -> str:
        return "-" if row.get(key) is None else f"{100 * row[key]:.2f}%"

    ok = {True: "yes", False: "NO"}.get(row.get("passed"), "-")
    return (
        f"  {fmt:<16}{format_bytes(row.get('bytes')):>10}{pct('accuracy'):>10}{pct('agreement'):>9}"
        f"{num('max_abs_diff', '.1e'):>10}{num('latency_ms_median'):>8}{num('latency_ms_p95'):>8}  {ok}"
    )


def _task_rows(ver: dict[str, Any]) -> list[str]:
    """The per-format rows of a task other than classification, in its verify columns."""
    from tfcnn.tasks import get_task

    columns = get_task(ver["task"]).verify_columns()
    widths = [max(len(head), 9) + 1 for head, *_ in columns]
    head = f"  {'format':<16}{'size':>10}" + "".join(f"{h:>{w}}" for (h, *_), w in zip(columns, widths)) + f"{'p50 ms':>8}  ok"
    keras = ", ".join(f"{k} {v:.4f}" for k, v in (ver.get("keras") or {}).items() if v is not None)
    lines = [head] + ([f"  {'keras (ref)':<16}{keras}"] if keras else [])
    for fmt, row in ver.get("formats", {}).items():
        cells = []
        for (_, key, spec, scale), w in zip(columns, widths):
            v = row.get(key)
            cells.append(f"{'-' if v is None else format(v * scale, spec):>{w}}")
        p50 = row.get("latency_ms_median")
        ok = {True: "yes", False: "NO"}.get(row.get("passed"), "-")
        lines.append(f"  {fmt:<16}{format_bytes(row.get('bytes')):>10}" + "".join(cells) + f"{'-' if p50 is None else format(p50, '.2f'):>8}  {ok}")
    return lines
