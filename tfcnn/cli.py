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
        return sp

    pipeline_cmd("run", "train, evaluate, export, verify and report, as the pipeline file says")
    pipeline_cmd("train", "train and evaluate only (no export)")

    sp = sub.add_parser("evaluate", help="re-evaluate a run on its test split")
    sp.add_argument("run_dir", type=Path)

    sp = sub.add_parser("predict", help="top-k labels for image files")
    sp.add_argument("run_dir", type=Path)
    sp.add_argument("images", type=Path, nargs="+")
    sp.add_argument("--top-k", type=int, default=3)
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sp = sub.add_parser("export", help="export a run to every registered format (SavedModel, TFLite, ONNX, CoreML) under export/<name>/<version>")
    sp.add_argument("run_dir", type=Path)
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
    sp.add_argument("--layer", help="conv layer to explain (default: the last conv layer)")
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
        run_pipeline(cfg, args.out, export=None if cmd == "run" else False)
        return 0
    if cmd == "evaluate":
        from tfcnn.evaluate import evaluate_run

        print(json.dumps(evaluate_run(args.run_dir), indent=2, default=str))
        return 0
    if cmd == "predict":
        from tfcnn.predict import predict_images

        results = predict_images(args.run_dir, args.images, top_k=args.top_k)
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            for r in results:
                best = ", ".join(f"{t['label']} {100 * t['probability']:.1f}%" for t in r["top_k"])
                print(f"{r['image']}: {best}")
        return 0
    if cmd == "export":
        from tfcnn.export import export_run, verify_version

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
    except KeyboardInterrupt:
        print(f"tfcnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
