"""`tfcnn verify`: every artifact of a version against the Keras model it came from.

Order matters: integrity first (sha256/size against the model card, so a truncated or edited
file is reported by name and never handed to a native runtime that could crash on it), then
accuracy / agreement / probability differences / latency per format on the held-out test split,
then the formats' client checks on the same images: a real external client (MediaPipe Tasks)
reading the TFLite metadata, and a second runtime (OpenVINO) re-running each file, whose
disagreements are reported as warnings (:mod:`tfcnn.export.openvino_check` says why). A client that
cannot be imported fails unless skipped. verification.json and verification.md are always
written before a failure is raised.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tfcnn.errors import TfcnnError, VerificationError
from tfcnn.export import quant_debug
from tfcnn.export.formats import FORMATS, client_names, client_of, ordered, thresholds_for
from tfcnn.run import Run, Verification
from tfcnn.tasks import get_task
from tfcnn.util import first_line, format_bytes, log, read_json, write_json, write_text


def threshold_failures(row: dict[str, Any], limits: dict[str, float], reference_score: float, task: str = "classification") -> list[str]:
    """One readable line per limit the row breaks (empty list = passes); NaN never passes."""
    return get_task(task).failures(row, limits, reference_score)


def changed_top1(keras_probs: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """Test images whose top-1 class differs between Keras and an artifact (the report shows them)."""
    kc, ic = keras_probs.argmax(1), probs.argmax(1)
    return [
        {
            "index": int(i),
            "label": int(labels[i]),
            "keras_class": int(kc[i]),
            "int8_class": int(ic[i]),
            "keras_prob": round(float(keras_probs[i, kc[i]]), 6),
            "int8_prob": round(float(probs[i, ic[i]]), 6),
        }
        for i in np.flatnonzero(kc != ic)
    ]


def _agreement(client: dict[str, Any]) -> Any:
    """A client check's agreement with LiteRT: top-1 (classifier) or per detection (detector)."""
    for key in ("top1_agreement_with_litert", "detection_agreement_with_litert", "pixel_agreement_with_litert"):
        if key in client:
            return client[key]
    return None


def _gates(result: dict[str, Any]) -> bool:
    """A client result fails verification when it did not pass, unless all it reports are warnings
    (a second runtime's disagreement with the file's own runtime: tfcnn.export.openvino_check)."""
    return result.get("passed") is False and (bool(result.get("failures")) or not result.get("warnings"))


def _skips(given: Mapping[str, str] | Sequence[str] | None, configured: list[str]) -> dict[str, str]:
    """Client name -> why its checks are skipped: the run's ``export.skip_clients``, then the
    caller's (a CLI flag, or the ``skip_clients`` argument). An unknown name is one error line."""
    out = {name: "by the user (export.skip_clients)" for name in configured}
    if isinstance(given, Mapping):
        out.update(given)
    else:
        out.update({name: f"by the user (skip_clients={name!r})" for name in given or ()})
    known = client_names()
    for name in out:
        if name not in known:
            raise VerificationError(f"cannot skip client {name!r}: the client checks are {', '.join(known)}")
    return out


def _cross_check_lines(report: dict[str, Any]) -> list[str]:
    """verification.md: every client other than MediaPipe (OpenVINO, ...), one line per format,
    and the warnings the checks reported without failing verification."""
    lines: list[str] = []
    for client in report.get("cross_checks") or []:
        lines += ["", f"## Cross-check: {client}", ""]
        for fmt, m in (report.get(client) or {}).items():
            text = m.get("summary") or (f"skipped ({m['skipped']})" if m.get("skipped") else f"passed {m.get('passed')}")
            lines.append(f"- {fmt}: {text}" + ("" if m.get("summary") or not m.get("failures") else ": " + "; ".join(m["failures"])))
    if report.get("warnings"):
        lines += ["", "## Cross-check warnings (reported, not failing verification)", ""] + [f"- {w}" for w in report["warnings"]]
    return lines


def _open_card(vd: Path) -> dict[str, Any]:
    if not vd.is_dir():
        raise VerificationError(f"version directory {str(vd)!r} does not exist")
    card_path = vd / "model_card.json"
    if not card_path.is_file():
        raise VerificationError(f"{card_path} is missing; this is not a complete export version (re-run tfcnn export)")
    try:
        return read_json(card_path)
    except TfcnnError as exc:
        raise VerificationError(str(exc)) from None


def verify_version(
    version_dir: Path,
    *,
    samples: int | None = None,
    threads: int | None = None,
    run: Run | Path | None = None,
    run_dir: Path | None = None,
    skip_clients: Mapping[str, str] | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Verify every artifact; write verification.json/.md; raise VerificationError when anything fails.

    ``run`` (a :class:`Run` or a path; ``run_dir`` is the same) overrides the reference run the
    model card records (the Keras model and data); passing the pipeline's Run shares its decoded
    test split. ``skip_clients``: client checks not to run (registered names, e.g. "mediapipe",
    "openvino"; a mapping gives each the reason recorded, e.g. "by the user (--skip-mediapipe)"),
    on top of the run's ``export.skip_clients``. A client that is not skipped and cannot be
    imported fails verification: its checks did not run.
    """
    from tfcnn.export import card as card_mod
    from tfcnn.export.runtime import latency_ms, set_tf_threads
    from tfcnn.export.source import bundle_of, load_source
    from tfcnn.export.wrapper import to_rgb
    from tfcnn.util import sha256_file

    given = _skips(skip_clients, [])  # a misspelt client is one line before any work
    vd = Path(version_dir).resolve()
    card = _open_card(vd)
    integrity = card_mod.check_integrity(vd, card.get("artifacts", []))
    for p in integrity:
        log.info("verify: INTEGRITY %s: %s", p["file"], p["problem"])
    shared_broken = {p["format"] for p in integrity} & {"contract", "labels", "other"}

    ref = run if run is not None else (run_dir if run_dir is not None else Path(card["source"]["run_dir"]))
    try:
        src = load_source(ref)
    except TfcnnError as exc:
        raise VerificationError(f"reference run for {vd}: {exc} (pass run_dir= to verify against another run)") from None
    ecfg = src.cfg.export
    try:
        task = get_task(src.cfg.task, src.cfg, src.run)  # with what the run decided (e.g. an anomaly threshold)
    except TfcnnError as exc:
        raise VerificationError(f"reference run for {vd}: {exc}") from None
    samples = samples if samples is not None else ecfg.verify_samples
    threads = threads if threads is not None else ecfg.threads
    runs = ecfg.latency_runs
    set_tf_threads(threads)
    skipped = {**_skips(None, list(getattr(ecfg, "skip_clients", None) or [])), **given}

    contract = card["contract"]
    entries = contract.get("artifacts", {})
    unknown = [f for f in entries if f not in FORMATS]
    formats = [f.name for f in ordered() if f.name in entries]
    labels = list(card["labels"])

    log.info("verify: loading test data from %s", src.cfg.data.source)
    x_test, y_test = bundle_of(src.run).arrays["test"]
    if samples is not None:
        x_test, y_test = x_test[:samples], y_test[:samples]
    if len(x_test) == 0:
        raise VerificationError("the test split is empty; nothing to verify against")
    h, w = contract["input"]["height"], contract["input"]["width"]
    if tuple(x_test.shape[1:3]) != (h, w):
        raise VerificationError(f"test images are {x_test.shape[1:]} but the contract input is {h}x{w}")
    rgb = np.ascontiguousarray(to_rgb(x_test))
    y = np.asarray(y_test)
    if y.ndim == 1:  # class ids; other tasks' labels (box rows, masks) are used as they are
        y = y.astype(np.int64)

    log.info("verify: keras reference on %d test images", len(y))
    model = src.load_model()
    keras_probs = task.reference(model, x_test)
    keras_acc = task.reference_score(keras_probs, y)

    sizes: dict[str, int] = {}
    for row in card.get("artifacts", []):
        if row["path"].endswith(quant_debug.SUFFIX):  # a report about the model, not part of what ships
            continue
        sizes[row["format"]] = sizes.get(row["format"], 0) + int(row["bytes"])

    results: dict[str, dict[str, Any]] = {}
    outputs: dict[str, np.ndarray] = {}
    for fmt_name in formats:
        fmt, entry = FORMATS[fmt_name], entries[fmt_name]
        limits = thresholds_for(fmt_name, entry, ecfg.thresholds)
        if task.limit_keys:  # a task with its own limits, derived from the format's, the run's overrides on top
            own = {k: v for k, v in (ecfg.thresholds or {}).get(fmt_name, {}).items() if k in task.limit_keys}
            limits = {**task.format_limits(limits), **own}
        row: dict[str, Any] = {"bytes": sizes.get(fmt_name), "thresholds": limits}
        results[fmt_name] = row
        bad = [p for p in integrity if p["format"] in ({fmt_name} | shared_broken)]
        if bad:
            row.update(passed=False, failures=[f"{p['file']}: {p['problem']}" for p in bad], skipped="integrity check failed")
            continue
        fails: list[str] = []
        if fmt.static_check is not None:
            fails += fmt.static_check(vd, entry, card)
            row["spec_checked"] = True
        if "quant_debug" in entry:  # the per-layer error analysis written at export (full-integer int8)
            row["quant_debug"], problems = quant_debug.read_summary(vd, entry)
            fails += problems
        reason = fmt.cannot_run()
        if reason is not None or fmt.runner is None:
            row["predictions"] = reason or "this format has no runner"
            row.update(passed=not fails, failures=fails)
            log.info("verify: %s spec %s (%s)", fmt_name, "ok" if not fails else "FAILED", row["predictions"])
            continue
        try:
            runner = fmt.runner(vd, entry, threads)
            probs = runner.predict(rgb)
            # A runner that is a stand-in for the real runtime (CoreML's numpy MIL evaluator off
            # macOS) says so in `latency_note`; its speed is not the artifact's, so none is reported.
            latency_note = getattr(runner, "latency_note", None)
            lat = {} if latency_note else latency_ms(runner.one(rgb[0]), runs)
        except Exception as exc:  # an artifact that does not run fails verification, it does not crash it
            row.update(passed=False, failures=fails + [f"{entry.get('file', fmt_name)}: cannot run ({type(exc).__name__}: {first_line(exc)})"])
            log.info("verify: %s FAILED to run: %s", fmt_name, first_line(exc))
            continue
        outputs[fmt_name] = probs
        try:
            row.update(task.compare(probs, keras_probs, y))
        except ValueError as exc:
            row.update(passed=False, failures=fails + [f"{entry.get('file', fmt_name)}: {exc}"])
            continue
        row.update(lat)
        row["threads"] = runner.threads
        evaluator = getattr(runner, "evaluator", None)  # what computed the predictions, when not the obvious runtime
        if evaluator:
            row["evaluator"] = evaluator
        if latency_note:
            row["latency"] = latency_note
        if fmt.static_check is not None and fmt.cannot_run() is None:
            row["predictions"] = f"compared with Keras ({evaluator})" if evaluator else "compared"
        fails += task.failures(row, limits, keras_acc)
        row.update(passed=not fails, failures=fails)
        shown = {"latency_ms_median": float("nan"), **row}
        log.info("verify: %s: %s -> %s", fmt_name, task.verify_line(shown), "ok" if not fails else "FAILED: " + "; ".join(fails))

    # Client checks (MediaPipe Tasks, OpenVINO): each format's, on the whole test split and that
    # format's outputs; results by client, then format (verification.json: "mediapipe", "openvino").
    by_client: dict[str, dict[str, Any]] = {}
    for fmt_name in formats:
        for check in FORMATS[fmt_name].client_checks:
            if fmt_name not in outputs:
                continue
            client, file = client_of(check), entries[fmt_name]["file"]
            if client in skipped:
                by_client.setdefault(client, {})[fmt_name] = {"passed": None, "skipped": skipped[client]}
                continue
            try:
                result = check(vd / file, rgb, outputs[fmt_name], labels)  # None: the check is for another task's outputs
                if result is None:
                    continue
            except ImportError as exc:  # a missing client is not a pass: its checks did not run
                result = {"passed": False, "failures": [
                    f"{client} is not importable ({type(exc).__name__}: {first_line(exc)}); install it "
                    f"(pip install {client}) or skip its checks with --skip-{client} (export.skip_clients)"]}
            except Exception as exc:
                result = {"passed": False, "failures": [f"could not load/run {file}: {type(exc).__name__}: {first_line(exc)}"]}
            by_client.setdefault(client, {})[fmt_name] = result
            if "summary" in result:
                log.info("verify: %s %s: %s", client, fmt_name, result["summary"])
            else:
                log.info(
                    "verify: %s %s: %s (%s agreement, labels from metadata %s)", client, fmt_name,
                    "ok" if result["passed"] else "FAILED", _agreement(result), result.get("labels_from_metadata"),
                )
    clients = by_client.pop("mediapipe", {})  # the published file's "mediapipe" section; others by their name
    warnings = [f"{c} {fmt}: {w}" for c, per in {"mediapipe": clients, **by_client}.items()
                for fmt, m in per.items() for w in m.get("warnings") or []]

    changes: dict[str, list] = {}
    for fmt_name in formats:
        key = FORMATS[fmt_name].changes_key
        if key:
            ok = fmt_name in outputs and isinstance(outputs[fmt_name], np.ndarray)  # top-1 exists for classifiers only
            changes[key] = changed_top1(keras_probs, outputs[fmt_name], y) if ok else []

    reference_sha = sha256_file(src.model_path)
    failures = [f"{fmt}: {f}" for fmt, r in results.items() for f in r.get("failures", [])]
    failures += [f"{fmt}: not a format this tfcnn knows; re-export with this version" for fmt in unknown]
    failures += [f"integrity: {p['file']}: {p['problem']}" for p in integrity if p["format"] not in results]
    failures += [
        f"{c} {v}: " + "; ".join(m.get("failures") or [f"agreement {_agreement(m)}, labels_from_metadata {m.get('labels_from_metadata')}"])
        for c, per in {"mediapipe": clients, **by_client}.items()
        for v, m in per.items()
        if _gates(m)
    ]
    record = Verification(
        version_dir=str(vd),
        verified=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        task=task.name,
        reference={
            "run_dir": str(src.root),
            "model_sha256": reference_sha,
            "same_as_exported": reference_sha == card.get("source", {}).get("model_sha256"),
        },
        samples=int(len(y)),
        threads=threads,
        latency_runs=runs,
        keras={task.reference_name: round(keras_acc, 6) if np.isfinite(keras_acc) else None},
        formats=results,
        integrity=integrity,
        clients=clients,
        passed=not failures,
        failures=failures,
        extra={"test_indices_source": "bundle.arrays['test'] order", "int8_changed": [], **changes, **by_client,
               "cross_checks": sorted(by_client), "warnings": warnings},
    )
    report = record.to_dict()
    try:  # each write is atomic; the card is rewritten last, so a failure leaves it as it was
        write_json(vd / card_mod.VERIFICATION_FILE, report)
        write_text(vd / "verification.md", verification_markdown(report))
        _update_card(vd, card, report)
    except OSError as exc:
        raise VerificationError(
            f"cannot write the verification results into {vd}: {exc.strerror or exc}; the model card was left "
            "unchanged; free space or fix permissions and re-run tfcnn verify"
        ) from None
    log.info("verify: %s: wrote %s", "PASSED" if report["passed"] else "FAILED", vd / card_mod.VERIFICATION_FILE)
    if failures:
        shown = "; ".join(failures[:3]) + (f" (+{len(failures) - 3} more)" if len(failures) > 3 else "")
        raise VerificationError(f"verification of {vd} failed: {shown}; details in verification.md")
    return report


def _update_card(vd: Path, card: dict[str, Any], report: dict[str, Any]) -> None:
    """The card carries per-format metrics once verified (the card is not in its own hash list)."""
    from tfcnn.export.card import card_markdown
    from tfcnn.export.repository import write_card_hash

    card["metrics"]["keras_test_accuracy_verify"] = report["keras"].get("accuracy")
    card["metrics"]["formats"] = {
        fmt: {k: row.get(k) for k in ("accuracy", "agreement", "max_abs_diff", "bytes", "latency_ms_median", "passed")}
        for fmt, row in report["formats"].items()
    }
    card["metrics"]["verified"] = report["verified"]
    card["metrics"]["verification_passed"] = report["passed"]
    write_json(vd / "model_card.json", card)
    write_card_hash(vd)
    write_text(vd / "model_card.md", card_markdown(card))


def _fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    import math

    if v is None:
        return "-"
    return "nan" if not math.isfinite(v) else format(v * scale, spec)


def _format_table(report: dict[str, Any], columns: list[tuple[str, Any]]) -> list[str]:
    """verification.md's per-format table: the task's own columns, then latency and the verdict."""
    heads = ["format", *[c for c, _ in columns], "p50 ms", "p95 ms", "passed"]
    align = ["---", *["---:"] * (len(columns) + 2), "---"]
    rows = [
        [fmt, *[cell(r) for _, cell in columns], _fmt(r.get("latency_ms_median"), ".3f"), _fmt(r.get("latency_ms_p95"), ".3f"),
         "yes" if r.get("passed") else "**NO**"]
        for fmt, r in report["formats"].items()
    ]
    return ["| " + " | ".join(line) + " |" for line in [heads, align, *rows]]


def _task_markdown(report: dict[str, Any], columns: list[tuple[str, str, str, float]]) -> str:
    """The per-format table of a task other than classification, from the task's
    :meth:`~tfcnn.tasks.base.Task.verify_columns` (header, row key, format spec, scale)."""
    keras = report.get("keras", {})
    ref = ", ".join(f"{k} {_fmt(v, '.4f')}" for k, v in keras.items()) or "-"
    lines = [
        f"# Verification of `{report['version_dir']}`",
        "",
        f"{report['samples']} test images, batch-1 latency over {report['latency_runs']} runs with {report['threads']} thread(s). "
        f"Keras {ref}. Overall: **{'PASSED' if report['passed'] else 'FAILED'}**.",
        "",
    ]
    cells = [("size", lambda r: format_bytes(r.get("bytes")))]
    cells += [(head, lambda r, k=key, f=spec, m=scale: _fmt(r.get(k), f, m) + ("%" if m == 100 and "agreement" in k else ""))
              for head, key, spec, scale in columns]
    lines += _format_table(report, cells)
    notes = [f"- {fmt}: {r['predictions']}" for fmt, r in report["formats"].items() if "predictions" in r]
    if notes:
        lines += ["", *notes]
    clients = report.get("clients") or report.get("mediapipe") or {}
    for v, m in clients.items():
        lines += ["", f"- client check {v}: passed {m.get('passed')}" + (f" ({m['skipped']})" if m.get("skipped") else "")]
    lines += quant_debug.markdown_lines(report)
    lines += _cross_check_lines(report)
    if report["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in report["failures"]]
    return "\n".join(lines) + "\n"


def verification_markdown(report: dict[str, Any]) -> str:
    task = report.get("task", "classification")
    if task != "classification":
        return _task_markdown(report, get_task(task).verify_columns())
    lines = [
        f"# Verification of `{report['version_dir']}`",
        "",
        f"{report['samples']} test images ({report['test_indices_source']}), batch-1 latency over "
        f"{report['latency_runs']} runs with {report['threads']} thread(s). Keras accuracy "
        f"{_fmt(report['keras']['accuracy'], '.2f', 100)}%. Overall: **{'PASSED' if report['passed'] else 'FAILED'}**.",
        "",
    ]
    lines += _format_table(report, [
        ("size", lambda r: format_bytes(r.get("bytes"))), ("accuracy", lambda r: _fmt(r.get("accuracy"), ".2f", 100) + "%"),
        ("agreement", lambda r: _fmt(r.get("agreement"), ".2f", 100) + "%"), ("max abs diff", lambda r: _fmt(r.get("max_abs_diff"), ".2e")),
        ("mean abs diff", lambda r: _fmt(r.get("mean_abs_diff"), ".2e")),
    ])
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
            lines.append(f"| {c['index']} | {c['label']} | {c['keras_class']} ({_fmt(c['keras_prob'], '.3f')}) | {c['int8_class']} ({_fmt(c['int8_prob'], '.3f')}) |")
    lines += quant_debug.markdown_lines(report)
    lines += _cross_check_lines(report)
    if report["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in report["failures"]]
    return "\n".join(lines) + "\n"
