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
from tfcnn.rundir import RunDir, read_json, write_json, write_text

FORMATS = ("savedmodel", "tflite_float32", "tflite_float16", "tflite_dynamic", "tflite_int8", "coreml")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(f"[tfcnn] export: {msg}", flush=True)


@contextmanager
def _step(name: str, quiet: bool) -> Iterator[dict[str, Any]]:
    """Time a step, print one progress line, and re-raise any failure as ExportError naming it."""
    note: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        yield note
    except ExportError as exc:
        raise ExportError(f"export step '{name}' failed: {_strip(str(exc), name)}") from exc
    except TfcnnError as exc:
        raise ExportError(f"export step '{name}' failed: {exc}") from exc
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ExportError(f"export step '{name}' failed: {type(exc).__name__}: {first}") from exc
    extra = f" ({note['detail']})" if note.get("detail") else ""
    _say(quiet, f"{name} done in {time.perf_counter() - started:.1f} s{extra}")


def _strip(msg: str, name: str) -> str:
    prefix = f"export step '{name}' failed: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KB" if n < 2**20 else f"{n / 2**20:.2f} MB"


def check_formats(formats: list[str]) -> list[str]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown export format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    if not formats:
        raise ExportError(f"no export formats selected; choose from {', '.join(FORMATS)}")
    return [f for f in FORMATS if f in formats]  # canonical order, no duplicates


def versions(name_dir: Path) -> list[int]:
    if not name_dir.is_dir():
        return []
    return sorted(int(p.name) for p in name_dir.iterdir() if p.is_dir() and p.name.isdigit())


def export_run(
    run_dir: Path,
    *,
    formats: list[str] | None = None,
    name: str | None = None,
    root: Path | None = None,
    version: int | None = None,
    overwrite: bool = False,
    android: Path | None = None,
    android_variant: str = "tflite_int8",
    quiet: bool = False,
) -> Path:
    """Export a trained run into ``<root>/<name>/<version>/`` and return that directory.

    Defaults (formats, name, root, representative_samples, coreml_precision, metadata) come from
    the run's saved config ``export`` section. A new version is made unless ``version=N`` with
    ``overwrite=True`` replaces an existing one.
    """
    from tfcnn.export.source import load_source

    src = load_source(Path(run_dir))
    ecfg = src.cfg.export
    chosen = check_formats(list(formats) if formats is not None else list(ecfg.formats))
    name = name or ecfg.name or src.cfg.name
    if not _NAME_RE.match(name):
        raise ExportError(f"export name {name!r} is not usable as a directory; use letters, digits, '_', '-', '.'")
    root = Path(root) if root is not None else Path(ecfg.root)
    name_dir = root / name
    name_dir.mkdir(parents=True, exist_ok=True)
    existing = versions(name_dir)
    if version is None:
        version = (existing[-1] + 1) if existing else 1
    elif version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    elif version in existing and not overwrite:
        raise ExportError(f"{name_dir / str(version)} already exists; pass overwrite=True (--overwrite) or leave out the version")
    if android is not None and android_variant not in chosen:
        raise ExportError(f"--android needs the {android_variant} variant, but formats are {', '.join(chosen)}")

    _say(quiet, f"{src.root} -> {name_dir / str(version)} ({', '.join(chosen)})")
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=name_dir))
    try:
        _build(src, chosen, name, version, tmp, quiet)
        _readable(tmp)
        final = _publish(tmp, name_dir, version, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with _step("models.config", quiet) as note:
        from tfcnn.export.savedmodel import write_models_config

        config_path = write_models_config(name_dir, name)
        _readable(config_path)
        note["detail"] = str(config_path)
    _record_export(src.root, final)
    if android is not None:
        with _step(f"android assets ({android_variant})", quiet):
            from tfcnn.export.android import write_android_assets

            write_android_assets(final, Path(android), android_variant)
    _say(quiet, f"version {version} complete in {time.perf_counter() - started:.1f} s: {final}")
    return final


def _build(src, chosen: list[str], name: str, version: int, out: Path, quiet: bool) -> None:
    from tfcnn.export import card as card_mod
    from tfcnn.export import coreml as coreml_mod
    from tfcnn.export import tflite as tflite_mod
    from tfcnn.export.tflite_metadata import MetadataSpec, build_metadata, populate, read_metadata
    from tfcnn.export.wrapper import geometry_of, mobile_archive

    ecfg = src.cfg.export
    with _step("load model", quiet) as note:
        model = src.load_model()
        g = geometry_of(model)
        labels = list(src.info.class_names)
        if int(model.outputs[0].shape[-1]) != len(labels):
            raise ExportError(f"model has {model.outputs[0].shape[-1]} outputs but data.json lists {len(labels)} classes")
        if any("\n" in l or not l.strip() for l in labels):
            raise ExportError("class names must be non-empty single lines to go into labels.txt")
        mean, std = card_mod.normalization_of(model, src.info.mean, src.info.std)
        note["detail"] = f"{model.name}, input {g.height}x{g.width}x{g.model_channels}, {len(labels)} classes"
    labels_text = "\n".join(labels) + "\n"
    write_text(out / "labels.txt", labels_text)
    contract_input = card_mod.input_contract(g, mean, std)
    artifacts: dict[str, Any] = {}
    scratch = out / ".scratch"

    if "savedmodel" in chosen:
        with _step("savedmodel", quiet) as note:
            from tfcnn.export.savedmodel import write_savedmodel

            # The label table reads labels.txt at save time and copies it to assets/.
            write_savedmodel(model, out / "labels.txt", out)
            artifacts["savedmodel"] = card_mod.savedmodel_entry(out)
            note["detail"] = "signatures " + ", ".join(artifacts["savedmodel"]["signatures"])

    mobile = [f for f in chosen if f.startswith("tflite_") or f == "coreml"]
    if mobile:
        import tensorflow as tf

        with _step("mobile wrappers", quiet):
            scratch.mkdir()
            if any(f in chosen for f in ("tflite_float32", "tflite_float16", "tflite_dynamic")):
                mobile_archive(model, tf.uint8).write_out(str(scratch / "uint8"), verbose=False)
            if "tflite_int8" in chosen or "coreml" in chosen:
                mobile_archive(model, tf.float32).write_out(str(scratch / "float32"), verbose=False)

    representative = None
    if "tflite_int8" in chosen:
        with _step("representative data", quiet) as note:
            from tfcnn.export.source import load_bundle

            bundle = load_bundle(src.cfg.data)
            x_train = bundle.arrays["train"][0]
            if tuple(x_train.shape[1:3]) != (g.height, g.width):
                raise ExportError(f"training images are {x_train.shape[1:]}, the model expects {g.height}x{g.width}")
            representative = tflite_mod.representative_images(x_train, ecfg.representative_samples, src.cfg.data.seed)
            note["detail"] = f"{len(representative) - 1} training images + 1 range pin"

    description = ecfg.description or f"{len(labels)}-class image classifier ({src.cfg.model.name}) trained with tfcnn"
    input_text = (
        f"RGB uint8 image {g.height}x{g.width} (NHWC, batch 1), raw pixels 0..255; "
        + ("grayscale conversion (0.299 R + 0.587 G + 0.114 B) and " if g.model_channels == 1 else "")
        + f"normalization (x - mean) / std with mean {contract_input['normalization']['mean']} and std "
        f"{contract_input['normalization']['std']} happen inside the model."
    )
    for variant in [f for f in chosen if f.startswith("tflite_")]:
        with _step(variant, quiet) as note:
            raw = tflite_mod.convert(variant, scratch / "uint8", scratch / "float32", representative)
            spec = MetadataSpec(
                name=f"{name} ({variant})",
                version=str(version),
                description=f"{description}. {tflite_mod.DESCRIPTIONS[variant]}.",
                author=ecfg.author,
                license=ecfg.license,
                height=g.height,
                width=g.width,
                input_description=input_text,
                output_description="Softmax probability per class, in the order of the packed labels.txt",
                contract={"input": contract_input, "output": {"kind": "probabilities", "activation": "softmax"}},
            )
            data = populate(raw, build_metadata(spec), {"labels.txt": labels_text.encode()})
            path = out / tflite_mod.VARIANTS[variant]
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            if read_metadata(data).labels != labels:  # the packed file must read back
                raise ExportError(f"{path.name}: labels packed in the metadata do not read back")
            artifacts[variant] = card_mod.tflite_entry(out, variant)
            note["detail"] = _size(len(data))

    if "coreml" in chosen:
        with _step("coreml", quiet) as note:
            rel = f"coreml/{name}.mlpackage"
            (out / "coreml").mkdir()
            spec_read = coreml_mod.convert(
                scratch / "float32",
                out / rel,
                height=g.height,
                width=g.width,
                labels=labels,
                precision=ecfg.coreml_precision,
                author=ecfg.author,
                license=ecfg.license,
                version=str(version),
                description=description,
                input_description=input_text,
            )
            artifacts["coreml"] = card_mod.coreml_entry(rel, spec_read)
            note["detail"] = f"{spec_read['compute_precision']} ML Program"

    shutil.rmtree(scratch, ignore_errors=True)
    with _step("contract and model card", quiet) as note:
        contract = card_mod.build_contract(name, version, g, mean, std, labels, artifacts)
        write_json(out / "contract.json", contract)
        rows = card_mod.manifest(out)
        settings = {
            "formats": chosen,
            "representative_samples": ecfg.representative_samples if representative is not None else None,
            "coreml_precision": ecfg.coreml_precision if "coreml" in chosen else None,
            "tflite_variants": {v: tflite_mod.DESCRIPTIONS[v] for v in chosen if v.startswith("tflite_")},
            "tool_versions": _tool_versions(),
        }
        card = card_mod.build_card(src, name, version, g, labels, contract, rows, settings)
        write_json(out / "model_card.json", card)
        write_text(out / "model_card.md", card_mod.card_markdown(card))
        note["detail"] = f"{len(rows)} files hashed, {_size(sum(r['bytes'] for r in rows))}"


def _tool_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("tensorflow", "keras", "ai-edge-litert", "coremltools", "mediapipe"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _readable(path: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; a model server usually runs as another user."""
    mask = os.umask(0)
    os.umask(mask)
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in entries:
        p.chmod((0o755 if p.is_dir() else 0o644) & ~mask)


def _publish(tmp: Path, name_dir: Path, version: int, overwrite: bool) -> Path:
    """Move the finished temp dir into place; an overwritten version is swapped out, then deleted."""
    final = name_dir / str(version)
    old = None
    if final.exists():
        if not overwrite:
            raise ExportError(f"{final} appeared while exporting (another export?); re-run to get the next version")
        old = name_dir / f".old-{version}-{uuid.uuid4().hex[:8]}"
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


def _record_export(run_root: Path, version_dir: Path) -> None:
    """Append to the run's exports.json so the report can find every version made from it."""
    rd = RunDir(run_root)
    entries = read_json(rd.exports) if rd.exports.is_file() else []
    if not isinstance(entries, list):
        entries = []
    path = str(version_dir.resolve())
    entries = [e for e in entries if e != path] + [path]
    write_json(rd.exports, entries)
