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

    pipeline_cmd("run", "train, evaluate, export, verify and report, as the pipeline file says")
    pipeline_cmd("train", "train and evaluate only (no export)")

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
    sp.add_argument("--top-k", type=int, default=3)
    out_kind = sp.add_mutually_exclusive_group()
    out_kind.add_argument("--json", action="store_true", help="JSON list instead of a table")
    out_kind.add_argument("--csv", action="store_true", help="CSV, one row per image, instead of a table")
    sp.add_argument("--out", type=Path, metavar="FILE", help="write the result here (atomically) instead of stdout")
    sp.add_argument("--batch-size", type=int, default=256, help="images decoded and predicted at a time")
    sp.add_argument("--threads", type=int, help="runtime threads for TFLite/ONNX (default: all cores)")

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

    sp = sub.add_parser("verify", help="check every artifact of an export version against the Keras model")
    sp.add_argument("version_dir", type=Path)
    sp.add_argument("--samples", type=int, help="test images to use (default: the run's export.verify_samples or all)")
    sp.add_argument("--threads", type=int)

    sp = sub.add_parser("benchmark", help="batch-1 latency of every artifact in an export version")
    sp.add_argument("version_dir", type=Path)
    sp.add_argument("--runs", type=int, default=50)
    sp.add_argument("--threads", type=int, default=1)

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

        print(format_summary(run_pipeline(cfg, args.out, export=None if cmd == "run" else False, overwrite=args.overwrite)))
        return 0
    if cmd == "evaluate":
        from tfcnn.evaluate import evaluate_run

        print(json.dumps(evaluate_run(args.run_dir), indent=2, default=str))
        return 0
    if cmd == "predict":
        from tfcnn.export.predict import check_source, predict_version
        from tfcnn.predict import find_images, predict_images, render_rows
        from tfcnn.util import log, write_text

        if args.top_k < 1 or args.batch_size < 1:
            raise TfcnnError(f"--top-k and --batch-size must be at least 1, got {args.top_k} and {args.batch_size}")
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
            out=args.root or Path("export"), version=args.version, input_size=args.input_size,
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
        )
        print(version_dir)
        if args.verify:
            verify_version(version_dir, run=args.run_dir)
        return 0
    if cmd == "verify":
        from tfcnn.export import verify_version

        verify_version(args.version_dir, samples=args.samples, threads=args.threads)
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
    if cmd == "report":
        from tfcnn.vis.report import build_report

        print(build_report(args.run_dir))
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
