"""Feed the Android demo from an export version directory, and check that it still matches it.

The app never guesses how to prepare an image: it reads the same ``contract.json`` the export
wrote. To prove that its Kotlin core reads the contract the way the Python side means it, this
module also writes *golden vectors*: a few test images as the ARGB ints Android's
``Bitmap.getPixels`` returns, the exact input tensor bytes fed to LiteRT here, LiteRT's raw output
tensor and the expected top-k. The classifier module's JVM tests replay them without the model.

Real photos go through the resize those test images skip: every PNG the app ships in
``classifier/src/test/resources/golden/photos`` (larger, smaller, non-square, with alpha, grey,
palette) is decoded and resized here by :func:`tfcnn.data.images.load_image` — the same code as the
folder source's training images and ``tfcnn predict`` — with both fits, and the JVM tests decode
the same files with ``javax.imageio`` and must produce the same pixels and tensor bytes, byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tfcnn.errors import ExportError, TfcnnError, VerificationError
from tfcnn.run import Run
from tfcnn.util import atomic_path, read_json, sha256_file, write_json, write_text

ASSETS = Path("app/src/main/assets")
GOLDEN = Path("classifier/src/test/resources/golden")
PHOTOS = GOLDEN / "photos"  # real PNGs of other sizes; android_demo/tools/golden_photos.py makes them
GOLDEN_FILE = "golden.json"
GOLDEN_SCHEMA = "tfcnn.android-golden/2"  # 2: + photos (the resize path)
MODEL_FILE = "model.tflite"
DTYPES = {"float32": np.float32, "uint8": np.uint8, "int8": np.int8}


# --------------------------------------------------------------------------- small helpers


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _interpreter(model_path: Path):
    from ai_edge_litert.interpreter import Interpreter

    try:
        interp = Interpreter(model_path=str(model_path))
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise VerificationError(f"{model_path}: LiteRT cannot load it ({exc}); re-export the model") from None
    return interp


def _quant(detail: dict) -> dict | None:
    """LiteRT reports scale 0 for tensors that are not quantized; the contract writes null."""
    scale, zero_point = detail["quantization"]
    return None if float(scale) == 0.0 else {"scale": float(scale), "zero_point": int(zero_point)}


def tensor_specs(model_path: Path) -> tuple[list[dict], list[dict]]:
    """Input and output tensors of a .tflite file in contract form, read back with LiteRT."""
    interp = _interpreter(model_path)

    def spec(d: dict) -> dict:
        return {
            "name": d["name"],
            "shape": [int(v) for v in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
            "quantization": _quant(d),
        }

    return [spec(d) for d in interp.get_input_details()], [spec(d) for d in interp.get_output_details()]


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in shape)


def read_labels(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


# --------------------------------------------------------------------------- the contract's pixel maths


def rgb_to_argb(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC (1 or 3 channels) -> int32 [N, H*W] ARGB_8888 as Android's Bitmap.getPixels returns."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ExportError(f"golden images must be uint8 NHWC with 1 or 3 channels, got shape {images.shape}")
    rgb = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
    rgb = rgb.astype(np.uint32)
    argb = (0xFF << 24) | (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return argb.reshape(len(images), -1).view(np.int32)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """TFLite's quantizer rounds half away from zero (std::round), unlike numpy's half-to-even."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def input_tensor(argb: np.ndarray, contract: dict, tensor: dict) -> np.ndarray:
    """The model input for one image, computed exactly as the Kotlin Preprocessor does (float64 maths).

    argb: int32 [H*W] pixels already at contract size. tensor: the model's input spec (contract form).
    """
    shape = tensor["shape"]
    h, w, c = int(shape[1]), int(shape[2]), int(shape[3])
    px = argb.astype(np.int64) & 0xFFFFFFFF
    rgb = np.stack([(px >> 16) & 0xFF, (px >> 8) & 0xFF, px & 0xFF], axis=-1).astype(np.float64)
    if c == 3:
        values = rgb
    elif c == 1:
        values = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])[:, None]
    else:
        raise ExportError(f"model input has {c} channels; the Android contract supports 1 or 3")
    norm = contract["input"].get("normalization") or {}
    if not norm.get("in_graph", True):
        mean = np.broadcast_to(np.asarray(norm["mean"], np.float64), (c,))
        std = np.broadcast_to(np.asarray(norm["std"], np.float64), (c,))
        values = (values - mean) / std
    dtype = tensor["dtype"]
    if dtype == "float32":
        out = values.astype(np.float32)
    elif dtype in ("uint8", "int8"):
        q = tensor.get("quantization")
        if q:
            values = _round_half_away(values / float(q["scale"])) + int(q["zero_point"])
        else:
            values = _round_half_away(values)
        info = np.iinfo(DTYPES[dtype])
        out = np.clip(values, info.min, info.max).astype(DTYPES[dtype])
    else:
        raise ExportError(f"model input dtype {dtype} is not supported by the Android demo (float32, uint8, int8)")
    return out.reshape(1, h, w, c)


def scores_from_raw(raw: np.ndarray, contract: dict, tensor: dict) -> np.ndarray:
    """Class scores from a raw output tensor, as the Kotlin Postprocessor computes them."""
    q = tensor.get("quantization")
    values = raw.astype(np.float64).reshape(-1)
    if tensor["dtype"] in ("uint8", "int8") and q:
        values = (raw.astype(np.int64).reshape(-1) - int(q["zero_point"])) * float(q["scale"])
    if contract["output"].get("kind") == "logits":
        e = np.exp(values - values.max())
        values = e / e.sum()
    return values


def top_k(scores: np.ndarray, labels: list[str], k: int) -> list[dict]:
    """Highest scores first; equal scores keep label order (quantized outputs tie often)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    return [{"index": int(i), "label": labels[i], "score": float(scores[i])} for i in order]


# --------------------------------------------------------------------------- writing the app's assets


def _require_app(android_dir: Path) -> None:
    if not (android_dir / "settings.gradle.kts").is_file() or not (android_dir / "classifier").is_dir():
        raise ExportError(
            f"{android_dir} is not the tfcnn Android demo (no settings.gradle.kts and classifier/); "
            "pass --android android_demo"
        )


def _variant_artifact(contract: dict, variant: str, version_dir: Path) -> dict:
    artifacts = contract.get("artifacts") or {}
    tflite = sorted(k for k, v in artifacts.items() if isinstance(v, dict) and v.get("format") == "tflite")
    art = artifacts.get(variant)
    if not isinstance(art, dict) or art.get("format") != "tflite":
        raise ExportError(
            f"--android-variant {variant!r} is not a TFLite artifact of {version_dir}; "
            f"choose one of {', '.join(tflite) or '(none: export a tflite_* format first)'}"
        )
    return art


def _probe_images(h: int, w: int, c: int, n: int) -> np.ndarray:
    """Deterministic stand-ins when no test images are given: gradients, a checkerboard, noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    base = [xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), ((xx // 2 + yy // 2) % 2) * 255]
    imgs = []
    for i in range(n):
        img = base[i] if i < len(base) else rng.integers(0, 256, size=(h, w))
        imgs.append(np.repeat(np.asarray(img)[..., None], c, axis=-1))
    return np.asarray(imgs, dtype=np.uint8)


def _card_run_dir(version_dir: Path) -> Path | None:
    """The training run the model card names, when it is still on this machine."""
    card_path = version_dir / "model_card.json"
    if not card_path.is_file():
        return None
    run = ((read_json(card_path).get("source") or {}).get("run_dir")) or None
    if not run:
        return None
    try:
        return Run.open(run).root
    except TfcnnError:
        return None


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


class _Replay:
    """The app's model in LiteRT, fed with the contract's pixel maths: what the goldens record."""

    def __init__(self, model_path: Path, contract: dict, labels: list[str], k: int):
        self.contract, self.labels, self.k = contract, labels, k
        inputs, outputs = tensor_specs(model_path)
        self.tin, self.tout = inputs[0], outputs[0]
        self.interp = _interpreter(model_path)
        self.in_idx = self.interp.get_input_details()[0]["index"]
        self.out_idx = self.interp.get_output_details()[0]["index"]

    def tensor(self, argb: np.ndarray) -> np.ndarray:
        return input_tensor(argb, self.contract, self.tin)

    def __call__(self, tensor: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        """Raw output tensor and top-k for one input tensor."""
        self.interp.set_tensor(self.in_idx, tensor)
        self.interp.invoke()
        raw = self.interp.get_tensor(self.out_idx).reshape(-1).copy()
        return raw, top_k(scores_from_raw(raw, self.contract, self.tout), self.labels, self.k)


def photo_goldens(android_dir: Path, contract: dict, run_model: _Replay) -> list[dict]:
    """One record per PNG in the app's golden photos: the Python reference resize of the file to
    the contract's size with each fit (uint8 RGB), the input tensor for the contract's fit, and
    the model's raw output and top-k for it.

    Missing photos are an error: without them the app's resize path would go unchecked.
    """
    from PIL import Image

    from tfcnn.data.images import FITS, load_image

    folder = Path(android_dir) / PHOTOS
    files = sorted(folder.glob("*.png"))
    if not files:
        raise ExportError(
            f"{folder} has no PNG photos, so the app's resize could not be checked; restore them from git "
            "(or make them with android_demo/tools/golden_photos.py)"
        )
    inp = contract["input"]
    h, w, fit = int(inp["height"]), int(inp["width"]), inp.get("fit", "stretch")
    if fit not in FITS:
        raise ExportError(f"contract.json input.fit = {fit!r}; the Android core implements {', '.join(FITS)}")
    records = []
    for path in files:
        with Image.open(path) as im:
            size, mode = im.size, im.mode
        resized = {f: load_image(path, (h, w), 3, f) for f in FITS}
        tensor = run_model.tensor(rgb_to_argb(resized[fit][None])[0])
        raw, top = run_model(tensor)
        records.append(
            {
                "file": path.name,
                "width": int(size[0]),
                "height": int(size[1]),
                "mode": mode,
                "resized_b64": {f: _b64(resized[f]) for f in FITS},
                "input_b64": _b64(tensor),
                "output_raw": raw.tolist(),
                "top_k": top,
            }
        )
    return records


def _samples_from_run(run_dir: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    from tfcnn.data import bundle_for

    x, y = bundle_for(Run.open(run_dir)).arrays["test"]
    return x[:n], y[:n]


def write_android_assets(
    version_dir: Path,
    android_dir: Path,
    variant: str = "tflite_int8",
    *,
    samples: tuple[np.ndarray, np.ndarray] | None = None,
    run_dir: Path | None = None,
    n_samples: int = 5,
    k: int = 3,
) -> dict:
    """Copy `variant` + labels + contract into the app's assets and write golden vectors for its JVM tests.

    Golden images come from `samples` (uint8 NHWC at the contract's size, labels), else from the
    test split of `run_dir`, else from deterministic probe patterns (label -1); golden photos
    (any size, resized by the Python reference) from the app's own test resources.
    Returns paths, the model's sha256 and the number of golden samples and photos.
    """
    version_dir, android_dir = Path(version_dir), Path(android_dir)
    _require_app(android_dir)
    contract = read_json(version_dir / "contract.json")
    art = _variant_artifact(contract, variant, version_dir)
    model_src = version_dir / art["file"]
    labels_src = version_dir / "labels.txt"
    for p in (model_src, labels_src):
        if not p.is_file():
            raise ExportError(f"{p} is missing; re-run `tfcnn export` for this run")
    labels = read_labels(labels_src)

    assets = android_dir / ASSETS
    _copy_atomic(model_src, assets / MODEL_FILE)
    _copy_atomic(labels_src, assets / "labels.txt")
    sha = sha256_file(assets / MODEL_FILE)
    app_contract = dict(contract)
    app_contract["android"] = {
        "variant": variant,
        "model_file": MODEL_FILE,
        "sha256": sha,
        "source_version_dir": os.path.relpath(version_dir.resolve(), android_dir.resolve()),
    }
    write_json(assets / "contract.json", app_contract)

    replay = _Replay(assets / MODEL_FILE, contract, labels, k)
    tin, tout = replay.tin, replay.tout
    h, w = int(contract["input"]["height"]), int(contract["input"]["width"])
    source = "samples argument"
    if samples is None:
        found = run_dir or _card_run_dir(version_dir)
        if found is not None:
            try:
                samples, source = _samples_from_run(found, n_samples), f"test split of {Path(found).name}"
            except TfcnnError:
                if run_dir is not None:  # asked for explicitly: say why it failed
                    raise
    if samples is None:
        x = _probe_images(h, w, int(contract["input"].get("model_channels") or 3), n_samples)
        y, source = np.full(len(x), -1), "probe patterns (no test images available)"
    else:
        x, y = np.asarray(samples[0])[:n_samples], np.asarray(samples[1])[:n_samples]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:3] != (h, w):
        raise ExportError(
            f"golden images must be uint8 NHWC at the contract size {h}x{w}, got {x.dtype} {_dims(x.shape)}"
        )

    argb = rgb_to_argb(x)
    records = []
    for i in range(len(x)):
        tensor = replay.tensor(argb[i])
        raw, top = replay(tensor)
        records.append(
            {
                "index": i,
                "label": int(y[i]),
                "width": w,
                "height": h,
                "argb": argb[i].tolist(),
                "input_b64": _b64(tensor),
                "output_raw": raw.tolist(),
                "top_k": top,
            }
        )
    photos = photo_goldens(android_dir, contract, replay)
    golden = {
        "schema": GOLDEN_SCHEMA,
        "variant": variant,
        "model_sha256": sha,
        "samples_source": source,
        "byte_order": "little",
        "k": k,
        "contract": app_contract,
        "labels": labels,
        "model_tensors": {"input": tin, "output": tout},
        "samples": records,
        "photos": photos,
    }
    golden_path = android_dir / GOLDEN / GOLDEN_FILE
    write_text(golden_path, json.dumps(golden, separators=(",", ":"), sort_keys=True) + "\n")
    return {
        "variant": variant,
        "model": str(assets / MODEL_FILE),
        "labels": str(assets / "labels.txt"),
        "contract": str(assets / "contract.json"),
        "golden": str(golden_path),
        "sha256": sha,
        "samples": len(records),
        "photos": len(photos),
    }


# --------------------------------------------------------------------------- checking them


_DIFF_ORDER = ("input", "output", "labels", "model", "schema", "artifacts")


def _brief(v: Any) -> str:
    if v is None:
        return "absent"
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    """Dotted paths where two contracts differ, the fields the app relies on first."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        order = sorted(keys, key=lambda k: (_DIFF_ORDER.index(k) if not path and k in _DIFF_ORDER else len(_DIFF_ORDER), k))
        for key in order:
            _diff(a.get(key), b.get(key), f"{path}.{key}" if path else key, out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"contract.json {path} is {_brief(a)} in the app but {_brief(b)} in the export")


def _quant_equal(a: dict | None, b: dict | None) -> bool:
    if not a or not b:
        return not a and not b
    return int(a["zero_point"]) == int(b["zero_point"]) and np.isclose(float(a["scale"]), float(b["scale"]), rtol=1e-6)


def check_android_assets(android_dir: Path, version_dir: Path) -> None:
    """Raise VerificationError naming every field where the app's assets disagree with the export."""
    android_dir, version_dir = Path(android_dir), Path(version_dir)
    assets = android_dir / ASSETS
    fix = f"refresh them with `tfcnn export RUN_DIR --android {android_dir}`"
    for name in (MODEL_FILE, "contract.json", "labels.txt"):
        if not (assets / name).is_file():
            raise VerificationError(f"{assets / name} is missing; {fix}")
    app = read_json(assets / "contract.json")
    export = read_json(version_dir / "contract.json")
    card = read_json(version_dir / "model_card.json")
    problems: list[str] = []

    android = app.get("android") or {}
    variant = android.get("variant")
    art = (export.get("artifacts") or {}).get(variant) if variant else None
    if not isinstance(art, dict):
        raise VerificationError(
            f"{assets / 'contract.json'} android.variant = {variant!r} is not an artifact of {version_dir}; {fix}"
        )
    sha = sha256_file(assets / MODEL_FILE)
    entry = next((a for a in card.get("artifacts", []) if a.get("path") == art.get("file")), None)
    if entry is None:
        problems.append(f"model_card.json artifacts has no entry for {art.get('file')}")
    elif entry.get("sha256") != sha:
        problems.append(
            f"model.tflite sha256 {sha[:12]}... != model_card.json artifacts[{art['file']}].sha256 "
            f"{str(entry.get('sha256'))[:12]}..."
        )
    if android.get("sha256") != sha:
        problems.append(f"contract.json android.sha256 {str(android.get('sha256'))[:12]}... != model.tflite {sha[:12]}...")

    app_core = {k: v for k, v in app.items() if k != "android"}
    drift: list[str] = []
    _diff(app_core, export, "", drift)
    problems += drift[:5] + ([f"... and {len(drift) - 5} more contract.json differences"] if len(drift) > 5 else [])

    inputs, outputs = tensor_specs(assets / MODEL_FILE)
    tin, tout = inputs[0], outputs[0]
    ci = app.get("input", {})
    want = [1, ci.get("height"), ci.get("width"), ci.get("channels")]
    for axis, field in ((1, "input.height"), (2, "input.width"), (3, "input.channels")):
        if len(tin["shape"]) != 4 or tin["shape"][axis] != want[axis]:
            problems.append(f"{field}: model input is {_dims(tin['shape'])} but contract.json says {_dims(want)}")
            break
    if tin["dtype"] != ci.get("dtype"):
        problems.append(f"input.dtype: model input is {tin['dtype']} but contract.json says {ci.get('dtype')}")
    app_art = (app.get("artifacts") or {}).get(variant) or {}
    for kind, actual in (("inputs", tin), ("outputs", tout)):
        declared = (app_art.get(kind) or [{}])[0]
        if declared.get("dtype") != actual["dtype"]:
            problems.append(
                f"artifacts.{variant}.{kind}[0].dtype: model has {actual['dtype']} but contract.json says {declared.get('dtype')}"
            )
        if not _quant_equal(declared.get("quantization"), actual["quantization"]):
            problems.append(
                f"artifacts.{variant}.{kind}[0].quantization: model has {actual['quantization']} "
                f"but contract.json says {declared.get('quantization')}"
            )
    n_out = int(np.prod(tout["shape"]))
    num_classes = (app.get("output") or {}).get("num_classes")
    if num_classes != n_out:
        problems.append(f"output.num_classes: model output is {_dims(tout['shape'])} but contract.json says {num_classes}")
    labels = read_labels(assets / "labels.txt")
    if len(labels) != n_out:
        problems.append(f"labels.txt has {len(labels)} labels but the model outputs {n_out} scores")
    if problems:
        raise VerificationError(f"{assets} does not match {version_dir}: " + "; ".join(problems) + f"; {fix}")


def write_sample_images(android_dir: Path, images: np.ndarray, labels: np.ndarray, class_names: list[str], n: int = 6) -> list[Path]:
    """PNG samples (one per class, first found in order) so the app has something to classify at first launch."""
    from PIL import Image

    out_dir = Path(android_dir) / ASSETS / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    written, seen = [], set()
    for i, (img, lab) in enumerate(zip(images, labels)):
        if int(lab) in seen:
            continue
        seen.add(int(lab))
        slug = "".join(ch if ch.isalnum() else "_" for ch in class_names[int(lab)].lower()).strip("_")
        path = out_dir / f"test{i:05d}_{slug}.png"
        arr = np.asarray(img, np.uint8)
        Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr).save(path, optimize=True)
        written.append(path)
        if len(written) == n:
            break
    return written
