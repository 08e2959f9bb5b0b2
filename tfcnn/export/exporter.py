"""`tfcnn export`: one run -> one new version directory in the model repository, atomically.

Everything is built in a hidden temp directory inside export/<name>/ (same file system, and TF
Serving ignores non-numeric names), then moved into place with os.replace. A failure in any step
removes the temp directory and raises ExportError naming the step, so a version either exists
complete (with its model card hashes) or not at all.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tfcnn.errors import ExportError, TfcnnError
from tfcnn.export.formats import FORMATS, PREREQUISITES, BuildContext, check_formats
from tfcnn.export.isolate import ConverterCrash, shared_worker
from tfcnn.export.source import SourceRun, load_source
from tfcnn.run import Run
from tfcnn.tasks import get_task
from tfcnn.util import ensure_dir, first_line, format_bytes, log, make_readable, write_json, write_text

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@contextmanager
def _step(name: str) -> Iterator[dict[str, Any]]:
    """Time a step, log one progress line, and re-raise any failure as ExportError naming it."""
    note: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        yield note
    except ConverterCrash as exc:
        raise ExportError(f"export step '{name}' {exc}; the version was not written") from exc
    except ExportError as exc:
        raise ExportError(f"export step '{name}' failed: {_strip(str(exc), name)}") from exc
    except TfcnnError as exc:
        raise ExportError(f"export step '{name}' failed: {exc}") from exc
    except Exception as exc:
        raise ExportError(f"export step '{name}' failed: {type(exc).__name__}: {first_line(exc)}") from exc
    extra = f" ({note['detail']})" if note.get("detail") else ""
    log.info("export: %s done in %.1f s%s", name, time.perf_counter() - started, extra)


def _strip(msg: str, name: str) -> str:
    prefix = f"export step '{name}' failed: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def _repository_dir(root: Path, name: str) -> Path:
    """export/<name>/, with one clear line when the repository cannot be created or written."""
    try:
        return ensure_dir(root / name)
    except OSError as exc:
        raise ExportError(
            f"cannot create the model repository directory {root / name}: {exc.strerror}; choose a writable export.root (--root)"
        ) from None


def _remove_stale_temp_dirs(name_dir: Path) -> None:
    """Temp dirs of exports whose process is gone (killed, crashed before cleanup) are removed, with a line."""
    for p in name_dir.iterdir():
        parts = p.name.split("-")
        if not p.is_dir() or not p.name.startswith((".tmp-", ".old-")) or len(parts) < 4 or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(p, ignore_errors=True)
        log.info("export: removed %s, left by an export (pid %d) that did not finish", p, pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def versions(name_dir: Path) -> list[int]:
    if not name_dir.is_dir():
        return []
    return sorted(int(p.name) for p in name_dir.iterdir() if p.is_dir() and p.name.isdigit())


def export_run(
    run: Run | Path,
    *,
    formats: list[str] | None = None,
    name: str | None = None,
    root: Path | None = None,
    version: int | None = None,
    overwrite: bool = False,
    android: Path | None = None,
    android_variant: str = "tflite_int8",
    serving_base: str | None = None,
) -> Path:
    """Export a trained run into ``<root>/<name>/<version>/`` and return that directory.

    ``serving_base`` (default ``export.serving_base``) is the model repository's path as TF
    Serving sees it, e.g. ``/models`` in the usual container; models.config's ``base_path`` is
    ``<serving_base>/<name>`` (default: this repository's absolute path).

    Defaults (formats, name, root, representative_samples, coreml_precision, metadata) come from
    the run's saved config ``export`` section. A new version is made unless ``version=N`` with
    ``overwrite=True`` replaces an existing one. Passing the pipeline's :class:`Run` shares its
    already-decoded data (int8 calibration) instead of loading the data set again.
    """
    src = load_source(run)
    ecfg = src.cfg.export
    chosen = check_formats(formats if formats is not None else ecfg.formats, src.cfg.task)
    name = name or ecfg.name or src.cfg.name
    if not _NAME_RE.match(name):
        raise ExportError(f"export name {name!r} is not usable as a directory; use letters, digits, '_', '-', '.'")
    root = Path(root) if root is not None else Path(ecfg.root)
    name_dir = _repository_dir(root, name)
    _remove_stale_temp_dirs(name_dir)
    existing = versions(name_dir)
    if version is None:
        version = (existing[-1] + 1) if existing else 1
    elif version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    elif version in existing and not overwrite:
        raise ExportError(f"{name_dir / str(version)} already exists; pass overwrite=True (--overwrite) or leave out the version")
    if android is not None and android_variant not in chosen:
        raise ExportError(f"--android needs the {android_variant} variant, but formats are {', '.join(chosen)}")

    log.info("export: %s -> %s (%s)", src.root, name_dir / str(version), ", ".join(chosen))
    started = time.perf_counter()
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-{os.getpid()}-", dir=name_dir))
    except OSError as exc:
        raise ExportError(f"cannot write in the model repository {name_dir}: {exc.strerror}; choose a writable export.root (--root)") from None
    try:
        _build(src, chosen, name, version, tmp)
        make_readable(tmp)
        final = _publish(tmp, name_dir, version, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with _step("models.config") as note:
        from tfcnn.export.serving import write_models_config

        config_path = write_models_config(name_dir, name, serving_base if serving_base is not None else ecfg.serving_base)
        note["detail"] = str(config_path)
    src.run.record_export(final)
    if android is not None:
        with _step(f"android assets ({android_variant})"):
            from tfcnn.export.android import write_android_assets

            write_android_assets(final, Path(android), android_variant)
    log.info("export: version %d complete in %.1f s: %s", version, time.perf_counter() - started, final)
    return final


def _build(src: SourceRun, chosen: list[str], name: str, version: int, out: Path) -> None:
    """Build every chosen format into ``out``, each with the prerequisites it declares."""
    from tfcnn.export import card as card_mod
    from tfcnn.export.repository import write_card_hash
    from tfcnn.export.wrapper import geometry_of

    ecfg = src.cfg.export
    with _step("load model") as note:
        task = get_task(src.cfg.task, src.cfg, src.run)  # with what the run decided (e.g. an anomaly threshold)
        model = src.load_model()
        g = geometry_of(model)
        labels = list(src.info.class_names)
        task.check_export(model, labels)
        if any("\n" in l or not l.strip() for l in labels):
            raise ExportError("class names must be non-empty single lines to go into labels.txt")
        _refuse_non_finite(model)
        mean, std = card_mod.normalization_of(model, src.info.mean, src.info.std)
        note["detail"] = f"{model.name}, input {g.height}x{g.width}x{g.model_channels}, {len(labels)} classes"
    write_text(out / "labels.txt", "\n".join(labels) + "\n")
    contract_input = card_mod.input_contract(g, mean, std, ecfg.fit)
    trained = "trained outside tfcnn" if card_mod.external(src) else "trained with tfcnn"
    description = ecfg.description or f"{task.describe(labels, card_mod.model_name(src))} {trained}"
    input_text = (
        f"RGB uint8 image {g.height}x{g.width} (NHWC, batch 1), raw pixels 0..255; "
        + ("grayscale conversion (0.299 R + 0.587 G + 0.114 B) and " if g.model_channels == 1 else "")
        + f"normalization (x - mean) / std with mean {contract_input['normalization']['mean']} and std "
        f"{contract_input['normalization']['std']} happen inside the model."
    )
    ctx = BuildContext(
        model=model, geometry=g, labels=labels, out=out, scratch=out / ".scratch", name=name, version=version,
        cfg=src.cfg, task=task, contract_input=contract_input, description=description, input_text=input_text, run=src.run,
    )
    ctx.scratch.mkdir()
    settings: dict[str, Any] = {"formats": chosen, "representative_samples": None, "coreml_precision": None}
    ctx.native = shared_worker()
    for fmt_name in chosen:
        _build_format(ctx, fmt_name, settings)
    shutil.rmtree(ctx.scratch, ignore_errors=True)
    with _step("contract and model card") as note:
        contract = card_mod.build_contract(name, version, g, mean, std, labels, ctx.built, task, ecfg.fit)
        write_json(out / "contract.json", contract)
        rows = card_mod.manifest(out)
        settings["tool_versions"] = _tool_versions()
        card = card_mod.build_card(src, name, version, g, labels, contract, rows, settings)
        write_json(out / "model_card.json", card)
        write_card_hash(out)
        write_text(out / "model_card.md", card_mod.card_markdown(card))
        note["detail"] = f"{len(rows)} files hashed, {format_bytes(sum(r['bytes'] for r in rows))}"


def _refuse_non_finite(model) -> None:
    """A NaN/inf weight would convert into a model that returns garbage on every image."""
    import numpy as np

    bad = [w.path for w in model.weights if not np.all(np.isfinite(np.asarray(w.numpy(), np.float64)))]
    if bad:
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ExportError(f"model.keras has non-finite weights in {bad[0]}{more}; retrain (training diverged) before exporting")


def _build_format(ctx: BuildContext, fmt_name: str, settings: dict[str, Any]) -> None:
    """One format, after the prerequisites it needs (each built once per export)."""
    fmt = FORMATS[fmt_name]
    for need in fmt.needs:
        if need not in ctx.prerequisites:
            pre = PREREQUISITES.get_or_raise(need, ExportError)
            with _step(pre.step) as note:
                ctx.prerequisites[need] = pre.build(ctx)
                note["detail"] = pre.detail(ctx.prerequisites[need])
    with _step(fmt_name) as note:
        entry = fmt.build(ctx)
        note["detail"] = entry.pop("_detail", "")
        ctx.built[fmt_name] = entry
    _merge(settings, fmt.card_settings(ctx))


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _tool_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("tensorflow", "keras", "ai-edge-litert", "coremltools", "mediapipe", "tf2onnx", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _publish(tmp: Path, name_dir: Path, version: int, overwrite: bool) -> Path:
    """Move the finished temp dir into place; an overwritten version is swapped out, then deleted."""
    final = name_dir / str(version)
    old = None
    if final.exists():
        if not overwrite:
            raise ExportError(f"{final} appeared while exporting (another export?); re-run to get the next version")
        old = name_dir / f".old-{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except OSError as exc:
        if old is not None:
            os.replace(old, final)
        raise ExportError(f"export step 'publish' failed: cannot move the new version into {final}: {exc}") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final
