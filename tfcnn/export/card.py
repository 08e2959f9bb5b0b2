"""contract.json and the model card: what an exported version promises, read back from its files."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np

from tfcnn.export import gpu_delegate
from tfcnn.export.formats.base import owner_of
from tfcnn.export.repository import CARD_FILE, CARD_HASH_FILE
from tfcnn.export.source import SourceRun
from tfcnn.export.tflite import ALL_VARIANTS, DESCRIPTIONS
from tfcnn.export.wrapper import GRAY_WEIGHTS, Geometry
from tfcnn.util import format_bytes, sha256_file

CONTRACT_SCHEMA = "tfcnn.contract/1"
CARD_SCHEMA = "tfcnn.model_card/1"
# Files a version holds that are not artifacts: the card lists hashes of everything else, and
# verification output is written after the card.
VERIFICATION_FILE = "verification.json"
NOT_ARTIFACTS = {CARD_FILE, CARD_HASH_FILE, "model_card.md", VERIFICATION_FILE, "verification.md"}


def normalization_of(model, fallback_mean: list[float], fallback_std: list[float]) -> tuple[list[float], list[float]]:
    """Mean/std as held by the model's `normalize` layer (what really runs in-graph)."""
    try:
        layer = model.get_layer("normalize")
        mean = np.asarray(layer.mean, np.float64).reshape(-1)
        std = np.sqrt(np.asarray(layer.variance, np.float64).reshape(-1))
        return [float(v) for v in mean], [float(v) for v in std]
    except (ValueError, AttributeError):
        return list(fallback_mean), list(fallback_std)


RESIZE_DETAIL = (
    "PIL Image.resize(BILINEAR) of the source box: triangle filter widened by the downscale factor "
    "(antialiased), 22-bit fixed-point weights, horizontal pass then vertical, each rounded to uint8 "
    "(tfcnn.data.images.resize_image); fit center_crop takes PIL ImageOps.fit's centred sub-pixel box; "
    "alpha is composited over black first, round(c * a / 255)"
)


def input_contract(g: Geometry, mean: list[float], std: list[float], fit: str = "stretch") -> dict[str, Any]:
    """The image every artifact takes, and how a client's photo of any size becomes it (`fit`:
    export.fit), stated precisely enough to reproduce bit for bit (the Android core does)."""
    r, gg, b = GRAY_WEIGHTS
    return {
        "height": g.height,
        "width": g.width,
        "channels": 3,
        "color_order": "RGB",
        "layout": "NHWC",
        "dtype": "uint8",
        "value_range": [0, 255],
        "resize": "bilinear",
        "fit": fit,
        "alpha": "over_black",
        "resize_detail": RESIZE_DETAIL,
        "model_channels": g.model_channels,
        "grayscale": f"in_graph: {r}*R + {gg}*G + {b}*B" if g.model_channels == 1 else None,
        "normalization": {
            "in_graph": True,
            "mean": [round(v, 6) for v in mean],
            "std": [round(v, 6) for v in std],
            "formula": "(x - mean) / std per channel, x in 0..255",
        },
    }


def savedmodel_entry(version_dir: Path) -> dict[str, Any]:
    """Signatures as the reloaded SavedModel reports them."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir))
    sigs = {}
    for key, fn in loaded.signatures.items():
        _, kwargs = fn.structured_input_signature
        sigs[key] = {
            "inputs": {k: {"dtype": s.dtype.name, "shape": s.shape.as_list()} for k, s in kwargs.items()},
            "outputs": {k: {"dtype": s.dtype.name, "shape": s.shape.as_list()} for k, s in fn.structured_outputs.items()},
        }
    return {
        "format": "savedmodel",
        "file": ".",
        "assets": ["assets/labels.txt"],
        "signatures": dict(sorted(sigs.items())),
        "serving": {
            "models_config": "../models.config",
            "rest": 'POST /v1/models/<name>:predict {"instances": [<uint8 [H][W][3]>]} or '
            '{"signature_name": "serving_bytes", "instances": [{"b64": "<JPEG/PNG base64>"}]}',
        },
    }


def tflite_entry(version_dir: Path, variant: str) -> dict[str, Any]:
    """The variant's interface, metadata and quantization recipe, each read back from the written file."""
    from tfcnn.export.tflite import recipe, tensor_details
    from tfcnn.export.tflite_metadata import read_metadata

    path = version_dir / ALL_VARIANTS[variant]
    details = tensor_details(path)
    meta = read_metadata(path.read_bytes())
    found = recipe(path)
    found.pop("per_layer")  # the summary; verify reads the file again
    found["float_weights"] = found["float_weights"][:20]  # a float32 file lists every layer: the first few say enough
    return {
        "format": "tflite",
        "file": ALL_VARIANTS[variant],
        "quantization_mode": variant.removeprefix("tflite_"),
        "description": DESCRIPTIONS[variant],
        "recipe": found,
        "inputs": details["inputs"],
        "outputs": details["outputs"],
        "metadata": {
            "name": meta.name,
            "version": meta.version,
            "min_parser_version": meta.min_parser_version,
            "labels_file": meta.label_file,
            "labels_file_type": meta.label_file_type,
            "runtime": "ai_edge_litert / MediaPipe Tasks ImageClassifier",
        },
    }


def coreml_entry(rel_path: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": "coreml",
        "file": rel_path,
        "model_type": spec["model_type"],
        "minimum_deployment_target": "iOS15",
        "compute_precision": spec["compute_precision"],
        "inputs": spec["inputs"],
        "input_image": {"scale": 1.0, "bias": [0.0, 0.0, 0.0], "color_layout": "RGB"},
        "outputs": spec["outputs"],
        "predicted_feature_name": spec["predicted_feature_name"],
        "predicted_probabilities_name": spec["predicted_probabilities_name"],
    }


def build_contract(
    name: str, version: int, g: Geometry, mean: list[float], std: list[float], labels: list[str], artifacts: dict[str, Any], task,
    fit: str = "stretch",
) -> dict[str, Any]:
    return {
        "schema": CONTRACT_SCHEMA,
        "model": {"name": name, "version": version},
        "input": input_contract(g, mean, std, fit),
        "output": task.output_contract(labels),
        "labels": {"file": "labels.txt", "names": list(labels)},
        "artifacts": artifacts,
    }


def manifest(version_dir: Path) -> list[dict[str, Any]]:
    """sha256 and size of every artifact file (SavedModel files and .mlpackage contents included)."""
    rows = []
    for path in sorted(p for p in version_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(version_dir).as_posix()
        if rel in NOT_ARTIFACTS:
            continue
        rows.append({"path": rel, "format": owner_of(rel), "sha256": sha256_file(path), "bytes": path.stat().st_size})
    return rows


def check_integrity(version_dir: Path, artifacts: list[dict[str, Any]], *, whole_version: bool = True) -> list[dict[str, str]]:
    """Each problem names the file: missing, truncated/grown, or content changed since export.

    ``whole_version`` (verify) also checks what the card cannot say about itself: the card's own
    hash (an edited card) and files the card does not list (added after export). A caller that
    checks only the artifacts it is about to run (``tfcnn predict``) passes False.
    """
    from tfcnn.export.repository import card_hash_problem

    problems = []
    if whole_version:
        card_problem = card_hash_problem(version_dir)
        if card_problem is not None:
            problems.append({"file": CARD_FILE, "format": "other", "problem": card_problem})
        listed = {row["path"] for row in artifacts}
        for path in sorted(p for p in version_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(version_dir).as_posix()
            if rel not in listed and rel not in NOT_ARTIFACTS:
                problems.append({"file": rel, "format": owner_of(rel), "problem": "not listed in model_card.json (added after export)"})
    for row in artifacts:
        path = version_dir / row["path"]
        if not path.is_file():
            problems.append({"file": row["path"], "format": row["format"], "problem": "missing"})
            continue
        size = path.stat().st_size
        if size != row["bytes"]:
            problems.append(
                {"file": row["path"], "format": row["format"], "problem": f"size {size} bytes, model card says {row['bytes']} (truncated or replaced)"}
            )
            continue
        if sha256_file(path) != row["sha256"]:
            problems.append({"file": row["path"], "format": row["format"], "problem": "sha256 mismatch against model_card.json (file was modified)"})
    return problems


def external(src: SourceRun) -> bool:
    """A model trained outside tfcnn (tfcnn.export_model): its config says nothing about training."""
    return src.metrics.get("engine") == "external"


def model_name(src: SourceRun) -> str:
    return str(src.metrics.get("model")) if external(src) else src.cfg.model.name


def _training_summary(src: SourceRun) -> dict[str, Any]:
    t, d, m = src.cfg.train, src.cfg.data, src.cfg.model
    if external(src):
        return {
            "engine": "external",
            "epochs_run": None,
            "best_epoch": None,
            "stop_reason": None,
            "params": src.metrics.get("params"),
            "config": {"model": model_name(src), "trained": "outside tfcnn (tfcnn.export_model)"},
        }
    return {
        "engine": src.metrics.get("engine", t.engine),
        "epochs_run": src.metrics.get("epochs_run"),
        "best_epoch": src.metrics.get("best_epoch"),
        "stop_reason": src.metrics.get("stop_reason"),
        "params": src.metrics.get("params"),
        "config": {
            "model": m.name,
            "width": m.width,
            "optimizer": t.optimizer,
            "learning_rate": t.learning_rate,
            "schedule": t.schedule,
            "epochs": t.epochs,
            "batch_size": d.batch_size,
            "augment": d.augment.summary(),  # only the ops that are on, each with its parameters
            "label_smoothing": t.label_smoothing,
            "weight_decay": t.weight_decay,
            "mixed_precision": t.mixed_precision,
        },
    }


def limitations(src: SourceRun, g: Geometry) -> list[str]:
    """What the card warns about: the data and input size (any task), the task's own caveats
    (:meth:`Task.card_limitations`), and what the CoreML check can and cannot show."""
    from tfcnn.tasks import get_task

    info = src.info
    chans = "grayscale" if g.model_channels == 1 else "RGB"
    trained = (
        f"Trained outside tfcnn; verified on {info.num_test} {chans} {g.height}x{g.width} test images"
        if external(src)
        else f"Trained on {info.num_train} {chans} {g.height}x{g.width} images from {info.source}"
    )
    task = get_task(src.cfg.task, src.cfg, src.run)
    return [
        f"{trained}; images unlike them (photos, other domains, other framing) are out of scope.",
        f"Mobile artifacts take exactly {g.height}x{g.width} RGB uint8 at batch 1; the caller resizes "
        f"(Pillow bilinear, fit {src.cfg.export.fit}, alpha over black: contract.json input.resize_detail; the Android "
        "core reproduces it to the bit) - only the SavedModel's serving_bytes signature decodes and resizes itself "
        "(the same steps in TF ops, float32 weights: within one step of that reference).",
        *task.card_limitations(),
        "CoreML predictions are checked with coremltools on macOS and, elsewhere, with tfcnn's numpy evaluator of "
        "the package's ML Program (float16 emulated op by op): that shows the converted program computes what Keras "
        "does in its precision, not the Neural Engine's or GPU's own kernels and rounding.",
    ]


def build_card(
    src: SourceRun,
    name: str,
    version: int,
    g: Geometry,
    labels: list[str],
    contract: dict[str, Any],
    artifacts: list[dict[str, Any]],
    export_settings: dict[str, Any],
) -> dict[str, Any]:
    info = src.info
    return {
        "schema": CARD_SCHEMA,
        "name": name,
        "version": version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "description": src.cfg.export.description
        or (
            (
                f"{info.num_classes}-class image classifier ({model_name(src)}) trained outside tfcnn, exported and verified with tfcnn."
                if external(src)
                else f"{info.num_classes}-class image classifier ({src.cfg.model.name}) trained with tfcnn on {info.source}."
            )
            if contract.get("output", {}).get("kind", "probabilities") == "probabilities"
            # another task (reconstruction, detection): the task's own words, and its outputs from the contract
            else f"{_task_of(src).describe(labels, model_name(src))} trained with tfcnn on {info.source}; "
            f"outputs {', '.join(contract['output'].get('tensors', []))}."
        ),
        "author": src.cfg.export.author,
        "license": src.cfg.export.license,
        "source": {"run_dir": str(src.root), "model": "model.keras", "model_sha256": sha256_file(src.model_path)},
        "dataset": {
            "source": info.source,
            "num_classes": info.num_classes,
            "input_shape": list(info.input_shape),
            "splits": {"train": info.num_train, "val": info.num_val, "test": info.num_test},
            "skipped_files": len(info.skipped),
        },
        "training": _training_summary(src),
        "metrics": {
            "keras_test_accuracy": src.metrics.get("test_accuracy"),
            # every headline test number of the run (a detector's mAP, an autoencoder's PSNR, ...)
            "keras_test": {k: v for k, v in src.metrics.items() if k.startswith("test_") and isinstance(v, (int, float))},
            "formats": {},
        },
        "export": export_settings,
        "contract": {"file": "contract.json", **contract},
        "labels": list(labels),
        "artifacts": artifacts,
        "limitations": limitations(src, g),
    }


def _task_of(src: SourceRun):
    from tfcnn.tasks import get_task

    return get_task(src.cfg.task, src.cfg, src.run)


def recipe_markdown(artifacts: dict[str, Any]) -> list[str]:
    """The card's quantization section: each TFLite file's recipe as read back from it at export,
    and the full-integer model's worst layers (tfcnn.export.quant_debug)."""
    rows = [(fmt, e["recipe"]) for fmt, e in artifacts.items() if isinstance(e, dict) and e.get("recipe")]
    if not rows:
        return []
    lines = ["", "## Quantization (read back from each file)", "",
             "| format | recipe | weights | granularity | activations | input -> output |", "|---|---|---|---|---|---|"]
    for fmt, r in rows:
        lines.append(
            f"| {fmt} | {r['kind']} | {', '.join(r['weight_dtypes']) or '-'} | {r['weight_granularity'] or '-'} | "
            f"{', '.join(r['activation_dtypes']) or '-'} | {', '.join(r['input_dtypes'])} -> {', '.join(r['output_dtypes'])} |"
        )
    for fmt, e in artifacts.items():
        qd = e.get("quant_debug") if isinstance(e, dict) else None
        if not qd:
            continue
        if qd.get("error"):
            lines += ["", f"Per-layer error of {fmt}: not available ({qd['error']})."]
            continue
        worst = "; ".join(
            f"{w['op']} `{w['tensor'].split(';')[0]}` {'exact' if w['snr_db'] is None else format(w['snr_db'], '.1f') + ' dB'}, "
            f"cosine {w['cosine']:.4f}"
            for w in qd.get("worst", [])[:3]
        )
        lines += ["", f"Per-layer error of {fmt} ({qd['measured_on']}, `{qd['file']}`), lowest SNR first: {worst}."]
    return lines


def card_markdown(card: dict[str, Any]) -> str:
    c = card["contract"]["input"]
    ds = card["dataset"]
    lines = [
        f"# Model card: {card['name']} v{card['version']}",
        "",
        card["description"],
        "",
        f"- Created: {card['created']}",
        f"- Author: {card['author']}; license: {card['license']}",
        f"- Source run: `{card['source']['run_dir']}`",
        "",
        "## Data",
        "",
        f"{ds['source']}: {ds['num_classes']} classes, {ds['splits']['train']} train / {ds['splits']['val']} val / "
        f"{ds['splits']['test']} test images, model input {'x'.join(map(str, ds['input_shape']))}.",
        "",
        "Labels: " + ", ".join(f"`{l}`" for l in card["labels"]),
        "",
        "## Input contract",
        "",
        f"RGB uint8 {c['height']}x{c['width']}x3 (NHWC), raw pixels 0..255, resize {c['resize']} "
        f"(fit {c.get('fit', 'stretch')}, alpha {c.get('alpha', 'over_black').replace('_', ' ')}). "
        + (f"Grayscale {c['grayscale']}. " if c["grayscale"] else "")
        + f"Normalization in-graph: mean {c['normalization']['mean']}, std {c['normalization']['std']}. "
        + (
            "Output: softmax probabilities in label order (labels.txt)."
            if card["contract"].get("output", {}).get("kind", "probabilities") == "probabilities"
            else f"Outputs: {', '.join(card['contract']['output'].get('tensors', []))} (see contract.json)."
        ),
        "",
        "## Training",
        "",
    ]
    tr = card["training"]
    if tr["engine"] == "external":
        lines.append(f"{tr['config']['model']}: {tr['config']['trained']}.")
    else:
        lines.append(
            f"{tr['config']['model']} via the {tr['engine']} engine, {tr['epochs_run'] if tr['epochs_run'] is not None else '?'} epochs "
            f"({tr['config']['optimizer']}, lr {tr['config']['learning_rate']}, {tr['config']['schedule']} schedule)."
        )
    lines += ["", "## Metrics", ""]
    acc = card["metrics"].get("keras_test_accuracy")
    lines.append(f"Keras test accuracy: {100 * acc:.2f}%" if acc is not None else "Keras test accuracy: not recorded")
    fmts = card["metrics"].get("formats") or {}
    if fmts:
        lines += ["", "| format | accuracy | agreement with Keras | passed |", "|---|---|---|---|"]
        for fmt, row in fmts.items():
            a = row.get("accuracy")
            ag = row.get("agreement")
            lines.append(
                f"| {fmt} | {'-' if a is None else f'{100 * a:.2f}%'} | {'-' if ag is None else f'{100 * ag:.2f}%'} | "
                f"{'yes' if row.get('passed') else 'NO'} |"
            )
    else:
        lines.append("Per-format metrics: run `tfcnn verify` on this version.")
    lines += ["", "## Artifacts", "", "| file | format | bytes | sha256 |", "|---|---|---|---|"]
    for row in card["artifacts"]:
        lines.append(f"| `{row['path']}` | {row['format']} | {format_bytes(row['bytes'])} | `{row['sha256'][:16]}…` |")
    lines += recipe_markdown(card["contract"].get("artifacts", {}))
    lines += gpu_delegate.markdown(card["contract"].get("artifacts", {}))
    lines += ["", "## Limitations", ""] + [f"- {l}" for l in card["limitations"]]
    return "\n".join(lines) + "\n"

