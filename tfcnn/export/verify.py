"""`tfcnn verify`: every artifact of a version against the Keras model it came from.

Order matters: integrity first (sha256/size against the model card, so a truncated or edited
file is reported by name and never handed to a native runtime that could crash on it), then
accuracy / agreement / probability differences / latency per format on the held-out test split,
then a real external client (MediaPipe Tasks) reading the TFLite metadata. verification.json and
verification.md are always written before a failure is raised.
"""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tfcnn.config import ThresholdsConfig
from tfcnn.errors import TfcnnError, VerificationError
from tfcnn.rundir import read_json, write_json, write_text

MEDIAPIPE_VARIANTS = ("tflite_int8", "tflite_float32")


def thresholds_for(fmt: str, t: ThresholdsConfig, coreml_precision: str = "float16") -> dict[str, float]:
    """The pass limits that apply to one format (ThresholdsConfig holds them all)."""
    table = {
        "savedmodel": {"max_abs_diff": t.savedmodel_max_abs_diff, "agreement": t.savedmodel_agreement},
        "tflite_float32": {"max_abs_diff": t.float32_max_abs_diff, "agreement": t.float32_agreement},
        "tflite_float16": {"agreement": t.float16_agreement},
        "tflite_dynamic": {"agreement": t.dynamic_agreement},
        "tflite_int8": {"agreement": t.int8_agreement, "max_accuracy_drop": t.int8_max_accuracy_drop},
        # CoreML predictions are compared only on macOS; same bar as the matching TFLite precision.
        "coreml": {"agreement": t.float16_agreement if coreml_precision == "float16" else t.float32_agreement},
    }
    return dict(table.get(fmt, {}))


def threshold_failures(row: dict[str, Any], limits: dict[str, float], keras_accuracy: float) -> list[str]:
    """One readable line per limit the row breaks (empty list = passes)."""
    fails = []
    if "max_abs_diff" in limits and row.get("max_abs_diff") is not None and row["max_abs_diff"] > limits["max_abs_diff"]:
        fails.append(f"max |p - p_keras| = {row['max_abs_diff']:.3g} > {limits['max_abs_diff']:.3g}")
    if "agreement" in limits and row.get("agreement") is not None and row["agreement"] < limits["agreement"]:
        fails.append(f"top-1 agreement with Keras {100 * row['agreement']:.2f}% < {100 * limits['agreement']:.2f}%")
    if "max_accuracy_drop" in limits and row.get("accuracy") is not None:
        drop = keras_accuracy - row["accuracy"]
        if drop > limits["max_accuracy_drop"] + 1e-12:
            fails.append(f"accuracy drop {100 * drop:.2f} points > {100 * limits['max_accuracy_drop']:.2f}")
    return fails


def compare(probs: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    diff = np.abs(probs.astype(np.float64) - reference.astype(np.float64))
    return {
        "accuracy": round(float(np.mean(probs.argmax(1) == labels)), 6),
        "agreement": round(float(np.mean(probs.argmax(1) == reference.argmax(1))), 6),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
    }


def int8_changes(keras_probs: np.ndarray, int8_probs: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    kc, ic = keras_probs.argmax(1), int8_probs.argmax(1)
    return [
        {
            "index": int(i),
            "label": int(labels[i]),
            "keras_class": int(kc[i]),
            "int8_class": int(ic[i]),
            "keras_prob": round(float(keras_probs[i, kc[i]]), 6),
            "int8_prob": round(float(int8_probs[i, ic[i]]), 6),
        }
        for i in np.flatnonzero(kc != ic)
    ]


def mediapipe_check(tflite_path: Path, images: np.ndarray, litert_probs: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Classify with MediaPipe Tasks ImageClassifier (labels from the TFLite metadata only).

    Agreement counts MediaPipe's top-1 as matching LiteRT when it is LiteRT's argmax or ties with
    it (uint8 outputs tie often); category_name must equal labels.txt for that index, which can
    only happen if MediaPipe read the label file packed in the metadata.
    """
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(tflite_path)), max_results=1)
    agree = names_ok = 0
    mismatches: list[dict[str, Any]] = []
    with vision.ImageClassifier.create_from_options(opts) as clf:
        for i, img in enumerate(images):
            res = clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img)))
            top = res.classifications[0].categories[0]
            p = litert_probs[i]
            ok = top.index == int(p.argmax()) or abs(float(p[top.index]) - float(p.max())) <= 1e-6
            agree += int(ok)
            named = top.category_name == labels[top.index]
            names_ok += int(named)
            if (not ok or not named) and len(mismatches) < 10:
                mismatches.append(
                    {"index": i, "mediapipe": [top.index, top.category_name, round(float(top.score), 6)], "litert_class": int(p.argmax())}
                )
    n = len(images)
    result = {
        "client": "mediapipe.tasks.python.vision.ImageClassifier",
        "checked": n,
        "top1_agreement_with_litert": round(agree / n, 6) if n else None,
        "labels_from_metadata": bool(n) and names_ok == n,
        "mismatches": mismatches,
    }
    result["passed"] = bool(n) and agree == n and names_ok == n
    return result


def verify_version(
    version_dir: Path,
    *,
    samples: int | None = None,
    threads: int | None = None,
    quiet: bool = False,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """Verify every artifact; write verification.json/.md; raise VerificationError when anything fails.

    `run_dir` overrides the reference run recorded in the model card (the Keras model and data).
    """
    from tfcnn.export import card as card_mod
    from tfcnn.export import coreml as coreml_mod
    from tfcnn.export.runtime import latency_ms, runner_for, set_tf_threads
    from tfcnn.export.source import load_bundle, load_source, sha256_file
    from tfcnn.export.tflite import VARIANTS
    from tfcnn.export.wrapper import to_rgb

    def say(msg: str) -> None:
        if not quiet:
            print(f"[tfcnn] verify: {msg}", flush=True)

    vd = Path(version_dir).resolve()
    if not vd.is_dir():
        raise VerificationError(f"version directory {str(vd)!r} does not exist")
    card_path = vd / "model_card.json"
    if not card_path.is_file():
        raise VerificationError(f"{card_path} is missing; this is not a complete export version (re-run tfcnn export)")
    try:
        card = read_json(card_path)
    except TfcnnError as exc:
        raise VerificationError(str(exc)) from None

    integrity = card_mod.check_integrity(vd, card.get("artifacts", []))
    for p in integrity:
        say(f"INTEGRITY {p['file']}: {p['problem']}")
    broken_formats = {p["format"] for p in integrity}
    shared_broken = broken_formats & {"contract", "labels", "other"}

    ref_dir = Path(run_dir) if run_dir is not None else Path(card["source"]["run_dir"])
    try:
        src = load_source(ref_dir)
    except TfcnnError as exc:
        raise VerificationError(f"reference run for {vd}: {exc} (pass run_dir= to verify against another run)") from None
    ecfg = src.cfg.export
    samples = samples if samples is not None else ecfg.verify_samples
    threads = threads if threads is not None else ecfg.threads
    runs = ecfg.latency_runs
    tf_threads = set_tf_threads(threads)

    contract = card["contract"]
    from tfcnn.export.exporter import FORMATS

    formats = [f for f in FORMATS if f in contract.get("artifacts", {})]
    labels = list(card["labels"])

    say(f"loading test data from {src.cfg.data.source}")
    bundle = load_bundle(src.cfg.data)
    x_test, y_test = bundle.arrays["test"]
    if samples is not None:
        x_test, y_test = x_test[:samples], y_test[:samples]
    if len(x_test) == 0:
        raise VerificationError("the test split is empty; nothing to verify against")
    h, w = contract["input"]["height"], contract["input"]["width"]
    if tuple(x_test.shape[1:3]) != (h, w):
        raise VerificationError(f"test images are {x_test.shape[1:]} but the contract input is {h}x{w}")
    rgb = np.ascontiguousarray(to_rgb(x_test))
    y = np.asarray(y_test).astype(np.int64)

    say(f"keras reference on {len(y)} test images")
    import keras

    model = src.load_model()
    logits = model.predict(x_test.astype(np.float32), batch_size=256, verbose=0)
    keras_probs = keras.ops.convert_to_numpy(keras.ops.softmax(keras.ops.convert_to_tensor(logits), axis=-1)).astype(np.float32)
    keras_acc = float(np.mean(keras_probs.argmax(1) == y))

    sizes: dict[str, int] = {}
    for row in card.get("artifacts", []):
        sizes[row["format"]] = sizes.get(row["format"], 0) + int(row["bytes"])

    results: dict[str, dict[str, Any]] = {}
    probs_by_fmt: dict[str, np.ndarray] = {}
    for fmt in formats:
        limits = thresholds_for(fmt, ecfg.thresholds, contract["artifacts"][fmt].get("compute_precision", "float16"))
        row: dict[str, Any] = {"bytes": sizes.get(fmt), "thresholds": limits}
        bad = [p for p in integrity if p["format"] in ({fmt} | shared_broken)]
        if bad:
            row.update(passed=False, failures=[f"{p['file']}: {p['problem']}" for p in bad], skipped="integrity check failed")
            results[fmt] = row
            continue
        if fmt == "coreml":
            rel = contract["artifacts"]["coreml"]["file"]
            fails = coreml_mod.check_spec(
                vd / rel,
                {
                    "height": h,
                    "width": w,
                    "labels": labels,
                    "precision": contract["artifacts"]["coreml"].get("compute_precision", "float16"),
                    "author": card.get("author", ecfg.author),
                    "license": card.get("license", ecfg.license),
                    "version": card["version"],
                },
            )
            row["spec_checked"] = True
            if sys.platform == "darwin":
                probs = coreml_mod.predict(vd / rel, rgb)
                row.update(compare(probs, keras_probs, y))
                fails += threshold_failures(row, limits, keras_acc)
                row["predictions"] = "compared on macOS"
            else:
                row["predictions"] = coreml_mod.SKIP_REASON
            row.update(passed=not fails, failures=fails)
            results[fmt] = row
            say(f"coreml spec {'ok' if not fails else 'FAILED'} ({row['predictions']})")
            continue
        try:
            runner = runner_for(vd, fmt, threads)
            probs = runner.predict(rgb)
            lat = latency_ms(runner.one(rgb[0]), runs)
        except Exception as exc:  # an artifact that does not run fails verification, it does not crash it
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            where = "." if fmt == "savedmodel" else VARIANTS.get(fmt, fmt)
            row.update(passed=False, failures=[f"{where}: cannot run ({type(exc).__name__}: {first})"])
            results[fmt] = row
            say(f"{fmt} FAILED to run: {first}")
            continue
        probs_by_fmt[fmt] = probs
        row.update(compare(probs, keras_probs, y))
        row.update(lat)
        row["threads"] = tf_threads if fmt == "savedmodel" else threads
        fails = threshold_failures(row, limits, keras_acc)
        row.update(passed=not fails, failures=fails)
        results[fmt] = row
        say(
            f"{fmt}: accuracy {100 * row['accuracy']:.2f}%, agreement {100 * row['agreement']:.2f}%, "
            f"max|dp| {row['max_abs_diff']:.2e}, p50 {row['latency_ms_median']:.3f} ms -> {'ok' if not fails else 'FAILED: ' + '; '.join(fails)}"
        )

    mediapipe: dict[str, Any] = {}
    for variant in MEDIAPIPE_VARIANTS:
        if variant not in probs_by_fmt:
            continue
        n = min(len(rgb), 200)
        try:
            mediapipe[variant] = mediapipe_check(vd / VARIANTS[variant], rgb[:n], probs_by_fmt[variant][:n], labels)
        except ImportError as exc:
            mediapipe[variant] = {"passed": None, "skipped": f"mediapipe not importable: {exc}"}
            continue
        except Exception as exc:
            mediapipe[variant] = {"passed": False, "failures": [f"MediaPipe could not load/run {VARIANTS[variant]}: {type(exc).__name__}: {exc}"]}
        m = mediapipe[variant]
        say(f"mediapipe {variant}: {'ok' if m['passed'] else 'FAILED'} ({m.get('top1_agreement_with_litert')} agreement, labels from metadata {m.get('labels_from_metadata')})")

    reference_sha = sha256_file(src.model_path)
    report: dict[str, Any] = {
        "version_dir": str(vd),
        "verified": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "reference": {
            "run_dir": str(src.root),
            "model_sha256": reference_sha,
            "same_as_exported": reference_sha == card.get("source", {}).get("model_sha256"),
        },
        "samples": int(len(y)),
        "threads": threads,
        "latency_runs": runs,
        "keras": {"accuracy": round(keras_acc, 6)},
        "formats": results,
        "integrity": integrity,
        "mediapipe": mediapipe,
        "int8_changed": int8_changes(keras_probs, probs_by_fmt["tflite_int8"], y) if "tflite_int8" in probs_by_fmt else [],
        "test_indices_source": "bundle.arrays['test'] order",
    }
    failures = [f"{fmt}: {f}" for fmt, r in results.items() for f in r.get("failures", [])]
    failures += [f"integrity: {p['file']}: {p['problem']}" for p in integrity if p["format"] not in results]
    failures += [
        f"mediapipe {v}: " + "; ".join(m.get("failures") or [f"agreement {m.get('top1_agreement_with_litert')}, labels_from_metadata {m.get('labels_from_metadata')}"])
        for v, m in mediapipe.items()
        if m.get("passed") is False
    ]
    report["passed"] = not failures
    report["failures"] = failures
    write_json(vd / "verification.json", report)
    write_text(vd / "verification.md", verification_markdown(report))
    _update_card(vd, card, report)
    say(f"{'PASSED' if report['passed'] else 'FAILED'}: wrote {vd / 'verification.json'}")
    if failures:
        shown = "; ".join(failures[:3]) + (f" (+{len(failures) - 3} more)" if len(failures) > 3 else "")
        raise VerificationError(f"verification of {vd} failed: {shown}; details in verification.md")
    return report


def _update_card(vd: Path, card: dict[str, Any], report: dict[str, Any]) -> None:
    """The card carries per-format metrics once verified (the card is not in its own hash list)."""
    from tfcnn.export.card import card_markdown

    card["metrics"]["keras_test_accuracy_verify"] = report["keras"]["accuracy"]
    card["metrics"]["formats"] = {
        fmt: {k: row.get(k) for k in ("accuracy", "agreement", "max_abs_diff", "bytes", "latency_ms_median", "passed")}
        for fmt, row in report["formats"].items()
    }
    card["metrics"]["verified"] = report["verified"]
    card["metrics"]["verification_passed"] = report["passed"]
    write_json(vd / "model_card.json", card)
    write_text(vd / "model_card.md", card_markdown(card))


def _fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def verification_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Verification of `{report['version_dir']}`",
        "",
        f"{report['samples']} test images ({report['test_indices_source']}), batch-1 latency over "
        f"{report['latency_runs']} runs with {report['threads']} thread(s). Keras accuracy "
        f"{100 * report['keras']['accuracy']:.2f}%. Overall: **{'PASSED' if report['passed'] else 'FAILED'}**.",
        "",
        "| format | size | accuracy | agreement | max abs diff | mean abs diff | p50 ms | p95 ms | passed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for fmt, r in report["formats"].items():
        size = r.get("bytes")
        size_s = "-" if size is None else (f"{size / 1024:.1f} KB" if size < 2**20 else f"{size / 2**20:.2f} MB")
        lines.append(
            f"| {fmt} | {size_s} | {_fmt(r.get('accuracy'), '.2f', 100)}% | {_fmt(r.get('agreement'), '.2f', 100)}% | "
            f"{_fmt(r.get('max_abs_diff'), '.2e')} | {_fmt(r.get('mean_abs_diff'), '.2e')} | "
            f"{_fmt(r.get('latency_ms_median'), '.3f')} | {_fmt(r.get('latency_ms_p95'), '.3f')} | {'yes' if r.get('passed') else '**NO**'} |"
        )
    notes = [f"- {fmt}: {r['predictions']}" for fmt, r in report["formats"].items() if "predictions" in r]
    if notes:
        lines += ["", *notes]
    if report["mediapipe"]:
        lines += ["", "## MediaPipe Tasks ImageClassifier", ""]
        for v, m in report["mediapipe"].items():
            lines.append(
                f"- {v}: {m.get('checked', 0)} images, top-1 agreement with LiteRT {_fmt(m.get('top1_agreement_with_litert'), '.2f', 100)}%, "
                f"labels read from metadata: {m.get('labels_from_metadata')}, passed: {m.get('passed')}"
                + (f" ({m['skipped']})" if m.get("skipped") else "")
            )
    lines += ["", f"## Top-1 changed under full-integer int8: {len(report['int8_changed'])}", ""]
    if report["int8_changed"]:
        lines += ["| test index | true | keras (p) | int8 (p) |", "|---:|---:|---|---|"]
        for c in report["int8_changed"][:50]:
            lines.append(f"| {c['index']} | {c['label']} | {c['keras_class']} ({c['keras_prob']:.3f}) | {c['int8_class']} ({c['int8_prob']:.3f}) |")
    if report["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in report["failures"]]
    return "\n".join(lines) + "\n"
