"""The `tfcnn` command line: one sub-command per stage, each re-runnable on a run directory."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tfcnn.errors import TfcnnError, VerificationError
from tfcnn.util import setup_logging


def _format_help() -> str:
    """The --formats help, from the format registry (no format is named here)."""
    from tfcnn.export.formats import ordered

    return "subset of: " + "; ".join(f"{f.name} ({f.summary})" for f in ordered())


def _add_skip_flags(sp: argparse.ArgumentParser) -> None:
    """--skip-<client> for every client check a format registers (MediaPipe, OpenVINO)."""
    from tfcnn.export.formats import client_names

    for name in client_names():
        sp.add_argument(f"--skip-{name}", dest=f"skip_{name}", action="store_true",
                        help=f"do not run the {name} client checks (recorded as skipped); without this flag, "
                        f"verification fails when {name} is missing or cannot be imported")


def _skips(args: argparse.Namespace) -> dict[str, str]:
    """The clients the user skipped on the command line, with the reason verify records."""
    from tfcnn.export.formats import client_names

    return {n: f"by the user (--skip-{n})" for n in client_names() if getattr(args, f"skip_{n}", False)}


def _at_least_one(text: str) -> int:
    """argparse type for counts (--top-k, --threads, --runs, ...): a whole number >= 1, else one usage line."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfcnn", description="Keras CNNs from tf.data to TF Serving, LiteRT and CoreML.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def pipeline_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("pipeline", type=Path, help="TOML pipeline file, e.g. pipelines/fashion_mnist.toml")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set train.epochs=3 (repeatable)")
        sp.add_argument("--out", type=Path, help="run directory (default runs/<name>)")
        sp.add_argument("--overwrite", action="store_true",
                        help="retrain from scratch in a run directory that holds a run made with other settings")
        return sp

    _add_skip_flags(pipeline_cmd("run", "train, evaluate, export, verify and report, as the pipeline file says"))
    pipeline_cmd("train", "train and evaluate only (no export)")
    sp = pipeline_cmd("lr-find", "LR range test: loss against a geometrically growing learning rate; writes "
                      "lr_find.json and plots/lr_find.png into the run directory and suggests a rate")
    sp.add_argument("--start", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    sp.add_argument("--end", type=float, default=10.0, help="last learning rate (default 10)")
    sp.add_argument("--steps", type=_at_least_one, default=100, help="training steps (batches), default 100")
    sp = pipeline_cmd("tune", "KerasTuner search over the [tune] section's settings; each trial a run, "
                      "results.csv and best.toml in --out (default runs/<name>_tune); rerun to resume")

    sp = sub.add_parser("evaluate", help="re-evaluate a run on its test split")
    sp.add_argument("run_dir", type=Path)

    sp = sub.add_parser(
        "predict", help="top-k labels for image files or folders, with a run's Keras model or an export version",
        epilog="Unreadable images become error rows; the exit status is then 1 (2 for a usage error).",
    )
    sp.add_argument("source", type=Path, metavar="RUN_OR_VERSION_DIR",
                    help="a run directory (runs/<name>) or an export version directory (export/<name>/<version>)")
    sp.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER", help="image files; folders are searched recursively")
    sp.add_argument("--format", help="export version only: the artifact to run, e.g. savedmodel, tflite_float32, onnx "
                    "(default: savedmodel if present, else the first that runs here)")
    sp.add_argument("--top-k", type=_at_least_one, default=3, help="labels per image (at most the model's classes)")
    out_kind = sp.add_mutually_exclusive_group()
    out_kind.add_argument("--json", action="store_true", help="JSON list instead of a table")
    out_kind.add_argument("--csv", action="store_true", help="CSV, one row per image, instead of a table")
    sp.add_argument("--out", type=Path, metavar="FILE", help="write the result here (atomically) instead of stdout")
    sp.add_argument("--batch-size", type=_at_least_one, default=256, help="images decoded and predicted at a time")
    sp.add_argument("--threads", type=_at_least_one, help="runtime threads for TFLite/ONNX (default: all cores)")

    sp = sub.add_parser(
        "export",
        help="export a run (or a .keras file trained anywhere) to every registered format under export/<name>/<version>",
    )
    sp.add_argument("run_dir", type=Path, metavar="RUN_DIR|MODEL.keras")
    sp.add_argument("--labels", type=Path, help="MODEL.keras only: class names, one per line, in the model's output order")
    sp.add_argument("--data", help="MODEL.keras only: images to verify on and calibrate with, e.g. folder:DIR or numpy:FILE.npz")
    sp.add_argument("--outputs", choices=["logits", "probabilities"], default="logits", help="MODEL.keras only: what the model returns")
    sp.add_argument("--input-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                    help="MODEL.keras only: the export size of a model built for any image size")
    sp.add_argument("--scale", type=float, help="MODEL.keras only: the model takes pixels * SCALE (e.g. 0.00392156862745098 for [0, 1]); default raw 0..255")
    sp.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                    help="MODEL.keras only: import this module first (it registers the model's custom layers)")
    sp.add_argument("--formats", nargs="+", help=_format_help())
    sp.add_argument("--name", help="model name in the repository (default: the run's export.name or run name)")
    sp.add_argument("--root", type=Path, help="model repository root (default: export)")
    sp.add_argument("--version", type=int, help="version number (default: next free)")
    sp.add_argument("--overwrite", action="store_true", help="replace --version N if it exists")
    sp.add_argument("--android", type=Path, metavar="APP_DIR", help="also copy the TFLite model and golden vectors into this Android app")
    sp.add_argument("--android-variant", default="tflite_int8")
    sp.add_argument("--verify", action="store_true", help="run tfcnn verify on the new version")
    _add_skip_flags(sp)
    sp.add_argument("--serving-base", metavar="PATH", help="the repository's path as TF Serving sees it, e.g. /models in "
                    "the usual container: models.config's base_path becomes PATH/<name> (default: this repository's absolute path)")

    sp = sub.add_parser("verify", help="check every artifact of an export version against the Keras model")
    sp.add_argument("version_dir", type=Path)
    sp.add_argument("--samples", type=_at_least_one, help="test images to use (default: the run's export.verify_samples or all)")
    sp.add_argument("--threads", type=_at_least_one)
    _add_skip_flags(sp)

    sp = sub.add_parser("benchmark", help="batch-1 latency of every artifact in an export version")
    sp.add_argument("version_dir", type=Path)
    sp.add_argument("--runs", type=_at_least_one, default=50)
    sp.add_argument("--threads", type=_at_least_one, default=1)

    sp = sub.add_parser("explain", help="saliency, Grad-CAM(++), Score-CAM, filters and feature maps as PNG")
    sp.add_argument("run_dir", type=Path)
    sp.add_argument("images", type=Path, nargs="+")
    sp.add_argument("--layer", help="layer to explain (default: the last feature map larger than 1x1)")
    sp.add_argument("--out", type=Path, help="output folder (default RUN_DIR/explain)")
    sp.add_argument("--methods", nargs="+", help="subset of: saliency smoothgrad gradcam gradcam_plus_plus scorecam activation_maximization filters feature_maps (default: all)")
    sp.add_argument("--classes", type=int, nargs="+", help="class ids to explain / maximise (default: the predicted class)")
    sp.add_argument("--filters", type=int, nargs="+", help="filter indices for activation maximisation")
    sp.add_argument("--smooth-samples", type=int, default=20, help="SmoothGrad noise samples")

    sp = sub.add_parser("inspect", help="per-layer shapes, parameters, FLOPs and receptive fields")
    sp.add_argument("run_dir", type=Path)

    sp = sub.add_parser("report", help="(re)build RUN_DIR/report.html")
    sp.add_argument("run_dir", type=Path)

    sp = sub.add_parser("runs", help="every run under a folder side by side: settings, test score, epochs, time, exports")
    sp.add_argument("folder", type=Path, nargs="?", default=Path("runs"), help="searched recursively (default runs/)")
    sp.add_argument("--sort", default="score", help="column to sort by (default score, best first), e.g. train_seconds, lr, run")
    order = sp.add_mutually_exclusive_group()
    order.add_argument("--asc", action="store_true", help="ascending (the default for every column but score)")
    order.add_argument("--desc", action="store_true", help="descending (the default for score)")
    kind = sp.add_mutually_exclusive_group()
    kind.add_argument("--csv", action="store_true", help="CSV instead of a table")
    kind.add_argument("--json", action="store_true", help="JSON list instead of a table")
    sp.add_argument("--out", type=Path, metavar="FILE", help="write here (atomically) instead of stdout; .csv/.json pick the kind")
    sp.add_argument("--hparams", type=Path, metavar="LOGDIR", help="also write TensorBoard HParams logs here (tensorboard --logdir LOGDIR)")

    sp = sub.add_parser("augment-preview", help="a PNG grid of training images beside augmented draws of them (data.augment)")
    sp.add_argument("pipeline", type=Path, help="TOML pipeline file, e.g. pipelines/fashion_mnist.toml")
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting, e.g. --set data.augment.mixup=0.2 (repeatable)")
    sp.add_argument("--out", type=Path, metavar="FILE", help="PNG to write (default RUN_DIR/plots/augment_preview.png)")
    sp.add_argument("--n", type=_at_least_one, default=8, help="training images, one row each (classes in turn)")
    sp.add_argument("--draws", type=_at_least_one, default=5, help="augmented draws per image")

    sp = sub.add_parser("weights", help="convert a pretrained model's ImageNet weights once into the cache "
                        "($TFCNN_WEIGHTS_DIR, default ~/.cache/tfcnn/weights); prints the .weights.h5 path")
    sp.add_argument("model", metavar="MODEL", help="a pretrained model name, e.g. efficientnet_lite0")
    sp.add_argument("--force", action="store_true", help="convert again even if a verified file is cached")
    return p


def _load_pipeline(args: argparse.Namespace):
    from tfcnn import config

    return config.load(args.pipeline, args.overrides)


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd in ("run", "train"):
        from tfcnn.pipeline import run_pipeline

        cfg = _load_pipeline(args)
        from tfcnn.pipeline import format_summary

        skips = _skips(args) if cmd == "run" else {}
        print(format_summary(run_pipeline(cfg, args.out, export=None if cmd == "run" else False, overwrite=args.overwrite,
                                          skip_clients=skips)))
        return 0
    if cmd == "lr-find":
        from tfcnn.run import Run
        from tfcnn.train.lr_find import find_lr, lr_find_dir
        from tfcnn.vis.lr_find import plot_lr_find

        cfg = _load_pipeline(args)
        run = Run.create(lr_find_dir(cfg, args.out))
        record = find_lr(cfg, run, start_lr=args.start, end_lr=args.end, steps=args.steps)
        png = plot_lr_find(run, record)
        print(json.dumps({"suggested_lr": record.suggested_lr, "min_loss_lr": record.min_loss_lr, "stopped": record.stopped,
                          "steps": len(record.lr), "record": str(run.path("lr_find")), "plot": str(png)}, indent=2))
        return 0
    if cmd == "tune":
        from tfcnn.tune import tune

        summary = tune(_load_pipeline(args), args.out, overwrite=args.overwrite)
        print(json.dumps(summary, indent=2, default=str))
        return 0
    if cmd == "evaluate":
        from tfcnn.evaluate import evaluate_run

        print(json.dumps(evaluate_run(args.run_dir), indent=2, default=str))
        return 0
    if cmd == "predict":
        from tfcnn.export.predict import check_source, predict_version
        from tfcnn.prediction import find_images, predict_images, render_rows
        from tfcnn.util import log, write_text

        kind = "csv" if args.csv else "json" if args.json else None
        if kind is None and args.out is not None:
            kind = {".csv": "csv", ".json": "json"}.get(args.out.suffix.lower())
        source, fmt = check_source(args.source, args.format)
        images = find_images(args.images)
        opts = dict(top_k=args.top_k, batch_size=args.batch_size)
        if source == "version":
            rows = predict_version(args.source, images, format=fmt, threads=args.threads, **opts)
        else:
            rows = predict_images(args.source, images, **opts)
        text = render_rows(rows, kind or "table")
        failed = sum(1 for r in rows if r["error"])
        if args.out is not None:
            write_text(args.out, text)
        else:
            sys.stdout.write(text)
        log.info("predict: %d images%s%s", len(rows), f" -> {args.out}" if args.out is not None else "",
                 f", {failed} unreadable (see their error rows)" if failed else "")
        return 1 if failed else 0
    if cmd == "export" and args.run_dir.suffix == ".keras":
        from tfcnn.export.external import export_keras_file

        if args.labels is None or args.data is None:
            raise TfcnnError("exporting a .keras file needs --labels labels.txt and --data SOURCE (e.g. folder:DIR or numpy:FILE.npz)")
        print(export_keras_file(
            args.run_dir, labels_file=args.labels, data=args.data, imports=args.imports, outputs=args.outputs,
            normalization={"scale": args.scale} if args.scale else "in_graph", formats=args.formats,
            out=args.root or Path("export"), version=args.version, input_size=args.input_size, serving_base=args.serving_base,
            **({"name": args.name} if args.name else {}),
        ))
        return 0
    if cmd == "export":
        from tfcnn.export import export_run, verify_version

        if args.labels is not None or args.data is not None:
            raise TfcnnError("--labels and --data are for exporting a MODEL.keras file; a run directory has its own")
        version_dir = export_run(
            args.run_dir, formats=args.formats, name=args.name, root=args.root, version=args.version,
            overwrite=args.overwrite, android=args.android, android_variant=args.android_variant,
            serving_base=args.serving_base,
        )
        print(version_dir)
        if args.verify:
            verify_version(version_dir, run=args.run_dir, skip_clients=_skips(args))
        return 0
    if cmd == "verify":
        from tfcnn.export import verify_version

        verify_version(args.version_dir, samples=args.samples, threads=args.threads, skip_clients=_skips(args))
        return 0
    if cmd == "benchmark":
        from tfcnn.export import benchmark_version

        print(json.dumps(benchmark_version(args.version_dir, runs=args.runs, threads=args.threads), indent=2))
        return 0
    if cmd == "explain":
        from tfcnn.vis.explain import explain_images

        paths = explain_images(
            args.run_dir, args.images, layer=args.layer, out_dir=args.out, methods=args.methods,
            classes=args.classes, filters=args.filters, smooth_samples=args.smooth_samples,
        )
        for path in paths:
            print(path)
        return 0
    if cmd == "inspect":
        from tfcnn.vis.inspect import inspect_run

        inspect_run(args.run_dir)
        return 0
    if cmd == "runs":
        from tfcnn.util import write_text
        from tfcnn.vis.runs import list_runs, render, write_hparams

        rows = list_runs(args.folder, sort=args.sort, descending=True if args.desc else False if args.asc else None)
        kind = "csv" if args.csv else "json" if args.json else None
        if kind is None and args.out is not None:
            kind = {".csv": "csv", ".json": "json"}.get(args.out.suffix.lower())
        text = render(rows, kind or "table")
        if args.out is not None:
            write_text(args.out, text)
        else:
            sys.stdout.write(text)
        if args.hparams is not None:
            write_hparams(rows, args.hparams)
        return 0
    if cmd == "report":
        from tfcnn.vis.report import build_report

        problems: list[str] = []
        print(build_report(args.run_dir, problems))
        if problems:
            print(f"tfcnn report: written, but {len(problems)} run file(s) could not be read (shown in the report): "
                  f"{problems[0]}", file=sys.stderr)
            return 1
        return 0
    if cmd == "augment-preview":
        from tfcnn.data import load_data
        from tfcnn.pipeline import default_run_dir, validate
        from tfcnn.run import Run
        from tfcnn.vis.augment_preview import PREVIEW_FILE, write_preview

        cfg = validate(_load_pipeline(args))  # the registries' checks too, before any data is read
        out = args.out or Run(default_run_dir(cfg)).path("plots") / PREVIEW_FILE
        print(write_preview(cfg.data, load_data(cfg.data), out, n=args.n, draws=args.draws))
        return 0
    if cmd == "weights":
        from tfcnn.models import pretrained

        print(pretrained.convert(args.model, force=args.force))
        return 0
    raise AssertionError(cmd)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    setup_logging()
    try:
        return _dispatch(args)
    except VerificationError as exc:
        print(f"tfcnn {args.command}: verification failed: {exc}", file=sys.stderr)
        return 1
    except TfcnnError as exc:
        print(f"tfcnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only or missing path the stages did not expect
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"tfcnn {args.command}: error: {exc.strerror or exc}{where}; nothing was half-written (files are replaced atomically)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tfcnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
