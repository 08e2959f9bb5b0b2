"""Reliability suite: bad inputs and faults, each through tfcnn's real entry points, each judged.

Why a suite and not only unit tests: the failures that hurt users are the ones nobody thought to
test — a traceback instead of a sentence, a NaN that compares false and passes, a file left half
written. Every case here runs the real command line (``tfcnn.cli.main``) or the library API on a
small real workspace (a trained tiny run, an exported and verified version, image folders, data
files), and is judged by the same rules:

* an expected error must be exactly one line ``tfcnn <command>: error: ...`` (or ``verification
  failed``) that names what is wrong (the case's pattern), with no traceback anywhere, and must
  leave every file of the workspace as it was (sizes and SHA-256 of every file, compared before
  and after) with no temp file left behind;
* an expected success must exit 0 and pass the case's own check of the result (a skipped file is
  listed, a stale temp dir is gone, the good images of a batch are still predicted, ...);
* an exception escaping the entry point is a traceback; a process killed by a signal is a crash
  (cases run in a worker process that the parent restarts after the case that killed it).

The final line is JSON with the counts per outcome and per family; the goal (issue 11) is 0
tracebacks, 0 crashes, 0 silently wrong and 0 half-written results. ``--list`` prints the cases,
``--only PATTERN`` runs a subset (the test suite runs a few, including cases built to fail, to
check the judge itself).

    python bench/reliability.py              # every case, about 4 minutes on 2 cores
    python bench/reliability.py --light --selftest --only "^selftest/"   # check the judge itself
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

OUTCOMES = (
    "clean_error",  # the one clear line, nothing touched
    "worked",  # exit 0 (or the promised partial result) and the case's check passed
    "traceback",
    "crash",
    "silently_wrong",  # exit 0 on bad input, or a result that the check found wrong
    "half_written",  # files changed or temp files left by a refused command
    "unclear_error",  # refused, but not with the one line naming the problem
    "wrongly_refused",  # good input refused
)
GOOD = ("clean_error", "worked")
ERROR_LINE = re.compile(r"^tfcnn( [\w-]+)?: (error|verification failed): \S")


# --------------------------------------------------------------------------- workspace


@dataclass
class Workspace:
    """The shared fixtures every case reads (cases copy what they change into their scratch dir)."""

    root: Path

    @property
    def npz(self) -> Path:
        return self.root / "data" / "synthetic.npz"

    @property
    def pipeline(self) -> Path:
        return self.root / "tiny.toml"

    @property
    def run(self) -> Path:
        return self.root / "runs" / "tiny"

    @property
    def other_run(self) -> Path:
        return self.root / "runs" / "other"

    @property
    def nan_run(self) -> Path:
        return self.root / "runs" / "nan"

    @property
    def version(self) -> Path:
        return self.root / "export" / "tiny" / "1"

    @property
    def other_version(self) -> Path:
        return self.root / "export" / "other" / "1"

    @property
    def folder(self) -> Path:
        return self.root / "folder"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def fashion_idx(self) -> Path:
        return self.root / "idx"


def synthetic(n: int, size: int = 16, classes: int = 3, seed: int = 0):
    """uint8 images where class k is a bright square in its own place, plus noise (learnable fast)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = (np.arange(n) % classes).astype(np.int32)
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, size, size, 1)).astype(np.float32)
    cells = int(math.ceil(math.sqrt(classes)))
    step = size // cells
    for i, label in enumerate(y):
        r, c = divmod(int(label), cells)
        x[i, r * step : (r + 1) * step, c * step : (c + 1) * step, :] += 150
    return np.clip(x, 0, 255).astype(np.uint8), y


def pipeline_text(ws: Workspace, name: str = "tiny", extra: str = "", engine: str = "fit", epochs: int = 3) -> str:
    return (
        f'name = "{name}"\nreport = false\n\n[data]\nsource = "numpy:{ws.npz}"\nbatch_size = 32\nval_fraction = 0.2\n\n'
        f'[model]\nname = "tiny_cnn"\n\n[train]\nengine = "{engine}"\nepochs = {epochs}\nlearning_rate = 0.01\ntensorboard = false\n\n'
        f"[export]\nenabled = false\n{extra}"
    )


def build_workspace(root: Path, light: bool = False) -> Workspace:
    """Train two tiny runs, export and verify them, write the image folders and data files.

    ``light`` writes only the data file and the pipeline (enough for the config and pipeline-file
    cases and the judge's self-test, which is what the test suite runs).
    """
    import numpy as np

    ws = Workspace(root)
    ws.npz.parent.mkdir(parents=True)
    xtr, ytr = synthetic(240, seed=1)
    xte, yte = synthetic(90, seed=2)
    np.savez(ws.npz, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, class_names=np.array(["a", "b", "c"]))
    ws.pipeline.write_text(pipeline_text(ws))
    if light:
        return ws

    import keras
    from PIL import Image

    from tfcnn.config import load
    from tfcnn.export import export_run, verify_version
    from tfcnn.pipeline import run_pipeline

    run_pipeline(load(ws.pipeline), ws.run)
    run_pipeline(load(ws.pipeline, ["train.epochs=1", "train.seed=7", 'name="other"']), ws.other_run)
    formats = ["savedmodel", "tflite_float32", "onnx"]
    export_run(ws.run, formats=formats, root=root / "export")
    verify_version(ws.version)
    export_run(ws.other_run, formats=["tflite_float32"], root=root / "export")

    shutil.copytree(ws.run, ws.nan_run)  # the same run with every weight NaN
    model = keras.models.load_model(ws.nan_run / "model.keras", compile=False)
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    model.save(ws.nan_run / "model.keras")

    ws.images.mkdir()
    Image.fromarray(xte[0, :, :, 0]).save(ws.images / "good.png")
    Image.fromarray(xte[1, :, :, 0]).convert("RGBA").save(ws.images / "rgba.png")
    Image.fromarray(np.repeat(xte[2], 3, axis=-1)).resize((64, 40)).save(ws.images / "large.jpg", quality=95)
    (ws.images / "text.png").write_text("this is not an image\n")
    (ws.images / "empty.png").write_bytes(b"")
    good = (ws.images / "good.png").read_bytes()
    (ws.images / "truncated.png").write_bytes(good[: len(good) // 2])
    (ws.images / "no_images").mkdir()
    (ws.images / "no_images" / "readme.txt").write_text("nothing here\n")

    for k, label in enumerate(["a", "b", "c"]):
        d = ws.folder / "ok" / label
        d.mkdir(parents=True)
        for i in np.flatnonzero(ytr == k)[:12]:
            Image.fromarray(xtr[i, :, :, 0]).save(d / f"{i}.png")
    ws.fashion_idx.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):  # IDX files in Fashion-MNIST's layout
        imgs = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        (ws.fashion_idx / f"{split}-images-idx3-ubyte").write_bytes(
            (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + imgs.tobytes()
        )
        (ws.fashion_idx / f"{split}-labels-idx1-ubyte").write_bytes(
            (2049).to_bytes(4, "big") + n.to_bytes(4, "big") + (np.arange(n) % 10).astype(np.uint8).tobytes()
        )
    return ws


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One bad input or fault and what tfcnn must do with it."""

    family: str
    name: str
    expect: Literal["error", "ok", "partial"]
    argv: Callable[[Workspace, Path], list[str]] | None = None  # CLI arguments (after setup)
    call: Callable[[Workspace, Path], Any] | None = None  # or a library call
    match: str = ""  # regex the error line must match: it names what is wrong
    setup: Callable[[Workspace, Path], None] | None = None  # prepares the scratch dir
    patch: Callable[[], contextlib.AbstractContextManager] | None = None  # fault injection
    check: Callable[[Workspace, Path, "Result"], list[str]] | None = None  # problems with a success

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}"


@dataclass
class Result:
    rc: int
    out: str
    err: str
    exc: str = ""  # an exception that escaped the entry point


CASES: list[Case] = []


def case(family: str, name: str, expect: str, **kw: Any) -> None:
    CASES.append(Case(family, name, expect, **kw))  # type: ignore[arg-type]


def copy_run(src: Callable[[Workspace], Path], dest: str = "run") -> Callable[[Workspace, Path], None]:
    return lambda ws, s: shutil.copytree(src(ws), s / dest, symlinks=True)


def write(rel: str, data: bytes | str) -> Callable[[Workspace, Path], None]:
    def do(ws: Workspace, s: Path) -> None:
        p = s / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)

    return do


def steps(*fns: Callable[[Workspace, Path], None]) -> Callable[[Workspace, Path], None]:
    def do(ws: Workspace, s: Path) -> None:
        for fn in fns:
            fn(ws, s)

    return do


def train_argv(*sets: str, pipeline: str | None = None) -> Callable[[Workspace, Path], list[str]]:
    """`tfcnn train` on the tiny pipeline (or `pipeline` in the scratch dir) into scratch/out."""

    def argv(ws: Workspace, s: Path) -> list[str]:
        p = str(s / pipeline) if pipeline else str(ws.pipeline)
        return ["train", p, "--out", str(s / "out"), *[a for kv in sets for a in ("--set", kv)]]

    return argv


@contextlib.contextmanager
def patched(target: str, replacement: Any) -> Iterator[None]:
    """unittest.mock.patch, imported late (the worker imports tfcnn first)."""
    from unittest import mock

    with mock.patch(target, replacement):
        yield


def oserror(code: int) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        path = next((a for a in args if isinstance(a, (str, Path))), "?")
        raise OSError(code, os.strerror(code), str(path))

    return fail


def numeric_keys() -> list[tuple[str, type]]:
    """Dotted name and base type of every int/float setting of the pipeline config."""
    from tfcnn.config import PipelineConfig

    out: list[tuple[str, type]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
                continue
            flat = {tp, *typing.get_args(tp)}
            flat |= {a for t in list(flat) for a in typing.get_args(t)}
            if bool in flat:
                continue
            if float in flat or int in flat:
                out.append((prefix + f.name, float if float in flat else int))

    walk(PipelineConfig, "")
    return out


def define_cases() -> None:
    """Every case, grouped by the stage it hurts."""
    if CASES:
        return
    # ---- config: NaN in every numeric setting (the worst finding), and other bad values
    for key, _ in numeric_keys():
        case("config", f"nan:{key}", "error", argv=train_argv(f"{key}=nan"), match=re.escape(key.split(".")[-1]))
    for kv, pat in [
        ("train.learning_rate=inf", "learning_rate"), ("train.learning_rate=-inf", "learning_rate"),
        ("train.learning_rate=0", "learning_rate"), ("train.epochs=0", "epochs"), ("train.epochs=100000000", "epochs"),
        ("train.epochs=2.5", "epochs"), ('train.epochs="ten"', "epochs"), ("data.val_fraction=1.5", "val_fraction"),
        ("data.batch_size=-1", "batch_size"), ("model.dropout=1.0", "dropout"), ("data.image_size=[16]", "image_size"),
        ("data.image_size=[0, 16]", "image_size"), ("data.channels=2", "channels"), ('train.engine="turbo"', "engine"),
        ("train.epoch=3", "epoch"), ("trian.epochs=3", "trian"), ("train.seed=-1", "seed"),
        ('model.name="resnet9000"', "resnet9000"), ('data.source="ftp://x"', "source"),
        ('export.formats=["tflite_int9"]', "tflite_int9"), ("export.thresholds={tflite_int8={agreemnt=0.9}}", "agreemnt"),
        ("export.thresholds={nosuch={agreement=0.9}}", "nosuch"), ("model.options={nosuch_option=1}", "nosuch_option"),
        ("train.learning_rate", "KEY=VALUE"), ('task="detection9"', "detection9"),
    ]:
        case("config", kv, "error", argv=train_argv(kv), match=re.escape(pat))

    # ---- pipeline files
    for name, data, pat in [
        ("not utf-8", b"name = \"x\"\n# caf\xe9\n", "UTF-8"), ("malformed toml", "name = \n[data\n", "TOML"),
        ("unknown section", '[trainer]\nepochs = 3\n', "trainer"), ("section is a value", "train = 3\n", "train"),
        ("binary garbage", bytes(range(256)) * 4, "pipeline"), ("a list where a table goes", "data = [1, 2]\n", "data"),
    ]:
        case("pipeline file", name, "error", setup=write("p.toml", data), argv=train_argv(pipeline="p.toml"), match=pat)
    case("pipeline file", "missing file", "error", argv=train_argv(pipeline="nope.toml"), match="nope.toml")
    case("pipeline file", "a directory", "error", setup=lambda ws, s: (s / "d.toml").mkdir(), argv=train_argv(pipeline="d.toml"), match="directory")

    # ---- data sources
    def src(source: str, *sets: str) -> Callable[[Workspace, Path], list[str]]:
        return lambda ws, s: train_argv(f'data.source="{source.format(ws=ws, s=s)}"', "train.epochs=1", *sets)(ws, s)

    case("data", "npz missing", "error", argv=src("numpy:{s}/none.npz"), match="none.npz")
    case("data", "npz is not an npz", "error", setup=write("x.npz", b"PK\x03\x04 not really"), argv=src("numpy:{s}/x.npz"), match="x.npz")
    for name, arrays, pat in [
        ("npz without x_train", {"y_train": [0, 1]}, "x_train"),
        ("npz label count mismatch", {"x_train": ("u8", (10, 8, 8, 1)), "y_train": [0] * 9}, "y_train"),
        ("npz float images with NaN", {"x_train": ("nan", (10, 8, 8, 1)), "y_train": [0, 1] * 5}, "x_train"),
        ("npz negative labels", {"x_train": ("u8", (10, 8, 8, 1)), "y_train": [-1, 0] * 5}, "label"),
        ("npz 5-D images", {"x_train": ("u8", (10, 2, 8, 8, 1)), "y_train": [0, 1] * 5}, "x_train"),
        ("npz string images", {"x_train": ("str", (10,)), "y_train": [0, 1] * 5}, "x_train"),
        ("npz one class", {"x_train": ("u8", (10, 8, 8, 1)), "y_train": [0] * 10}, "class"),
        ("npz class_names count", {"x_train": ("u8", (10, 8, 8, 1)), "y_train": [0, 1] * 5, "class_names": ["a", "b", "c"]}, "class_names"),
    ]:
        case("data", name, "error", setup=npz_writer("bad.npz", arrays), argv=src("numpy:{s}/bad.npz"), match=pat)
    case("data", "folder missing", "error", argv=src("folder:{s}/nowhere"), match="nowhere")
    case("data", "folder empty", "error", setup=lambda ws, s: (s / "empty").mkdir(), argv=src("folder:{s}/empty"), match="empty")
    case("data", "folder with one class", "error", setup=folder_with(classes=1), argv=src("folder:{s}/f"), match="class")
    case("data", "class with only unreadable files", "error", setup=folder_with(broken_class=True), argv=src("folder:{s}/f"), match="unreadable")
    for name, data in [
        ("truncated png", "truncated"), ("zero-byte png", b""), ("text named .png", b"hello\n"), ("garbled jpeg", "garbled"),
        ("decompression bomb", "bomb"), ("random bytes .bmp", bytes(range(256)) * 3),
    ]:
        case("data", f"folder with a {name}", "ok", setup=folder_with(bad=data), argv=src("folder:{s}/f"), check=skipped_listed)
    case("data", "idx dir without files", "error", setup=lambda ws, s: (s / "idx").mkdir(),
         argv=lambda ws, s: train_argv('data.source="fashion_mnist"', f'data.path="{s}/idx"')(ws, s), match="idx")
    case("data", "idx truncated images", "error", setup=idx_copy(truncate=True),
         argv=lambda ws, s: train_argv('data.source="fashion_mnist"', f'data.path="{s}/idx"')(ws, s), match="idx")
    case("data", "idx wrong magic", "error", setup=idx_copy(magic=True),
         argv=lambda ws, s: train_argv('data.source="fashion_mnist"', f'data.path="{s}/idx"')(ws, s), match="magic|idx")
    case("data", "idx labels and images disagree", "error", setup=idx_copy(short_labels=True),
         argv=lambda ws, s: train_argv('data.source="fashion_mnist"', f'data.path="{s}/idx"')(ws, s), match="label")
    case("data", "tfds name that does not exist", "error", argv=src("tfds:no_such_dataset_xyz"), match="no_such_dataset_xyz")
    case("data", "train_subset larger than the data", "ok", argv=src("numpy:{ws.npz}", "data.train_subset=100000"),
         check=lambda ws, s, r: [] if (s / "out" / "model.keras").is_file() else ["no model.keras"])

    # ---- training: reruns, non-finite losses, bad run directories
    def rerun(engine: str, *sets: str, overwrite: bool = False) -> Callable[[Workspace, Path], list[str]]:
        def argv(ws: Workspace, s: Path) -> list[str]:
            a = ["train", str(s / "p.toml"), "--out", str(s / "run"), *[x for kv in sets for x in ("--set", kv)]]
            return a + (["--overwrite"] if overwrite else [])

        return argv

    for first in ("fit", "tape"):
        setup = steps(lambda ws, s, e=first: (s / "p.toml").write_text(pipeline_text(ws, engine=e, epochs=1)),
                      lambda ws, s: __import__("tfcnn.cli").cli.main(["train", str(s / "p.toml"), "--out", str(s / "run")]))
        case("train", f"{first} rerun with a changed setting", "error", setup=setup, argv=rerun(first, "train.learning_rate=0.02"), match="learning_rate")
        other = "tape" if first == "fit" else "fit"
        case("train", f"{first} run rerun with engine {other}", "error", setup=setup, argv=rerun(first, f'train.engine="{other}"'), match="engine")
        case("train", f"{first} rerun with --overwrite", "ok", setup=setup, argv=rerun(first, "train.seed=3", overwrite=True),
             check=lambda ws, s, r: metrics_say(s / "run", seed=3))
    case("train", "--out is a file", "error", setup=write("file", "x"),
         argv=lambda ws, s: ["train", str(ws.pipeline), "--out", str(s / "file")], match="file")
    case("train", "run directory on a read-only file system", "error", patch=lambda: patched("tfcnn.run.ensure_dir", oserror(errno.EROFS)),
         argv=train_argv(), match="Read-only")
    case("train", "disk full while saving", "error", patch=lambda: patched("tfcnn.util.tempfile.mkstemp", oserror(errno.ENOSPC)),
         argv=train_argv("train.epochs=1"), match="No space")
    case("train", "train_model: NaN inputs", "error", call=train_model_nan, match="non-finite|NaN")
    case("train", "train_model: labels out of range", "error", call=train_model_bad_labels, match="label")
    case("train", "train_model: epochs=0", "error", call=lambda ws, s: train_model_call(ws, epochs=0), match="epochs")

    # ---- export
    def exp(*args: str) -> Callable[[Workspace, Path], list[str]]:
        return lambda ws, s: ["export", *[a.format(ws=ws, s=s) for a in args], "--root", str(s / "export")]

    case("export", "run dir missing", "error", argv=exp("{s}/nope"), match="nope")
    case("export", "not a run dir", "error", setup=lambda ws, s: (s / "d").mkdir(), argv=exp("{s}/d"), match="run")
    case("export", "run without model.keras", "error", setup=steps(copy_run(lambda ws: ws.run), lambda ws, s: (s / "run" / "model.keras").unlink()),
         argv=exp("{s}/run"), match="model.keras")
    case("export", "NaN weights", "error", setup=copy_run(lambda ws: ws.nan_run), argv=exp("{s}/run", "--formats", "tflite_int8"), match="non-finite")
    case("export", "unknown format", "error", setup=copy_run(lambda ws: ws.run), argv=exp("{s}/run", "--formats", "tflite_int9"), match="tflite_int9")
    case("export", "version exists", "error", setup=steps(copy_run(lambda ws: ws.run), lambda ws, s: (s / "export" / "tiny" / "1").mkdir(parents=True)),
         argv=exp("{s}/run", "--formats", "tflite_float32", "--version", "1"), match="exists")
    case("export", "read-only model repository", "error", setup=copy_run(lambda ws: ws.run),
         patch=lambda: patched("tfcnn.export.exporter.ensure_dir", oserror(errno.EROFS)), argv=exp("{s}/run", "--formats", "tflite_float32"), match="Read-only")
    case("export", "disk full writing the card", "error", setup=copy_run(lambda ws: ws.run),
         patch=lambda: patched("tfcnn.util.tempfile.mkstemp", oserror(errno.ENOSPC)), argv=exp("{s}/run", "--formats", "tflite_float32"), match="No space")
    case("export", "converter segfaults", "error", setup=copy_run(lambda ws: ws.run),
         patch=lambda: patched("tfcnn.export.tflite.convert", segfault), argv=exp("{s}/run", "--formats", "tflite_float32"), match="crashed")
    case("export", "converter raises", "error", setup=copy_run(lambda ws: ws.run),
         patch=lambda: patched("tfcnn.export.tflite.convert", explode), argv=exp("{s}/run", "--formats", "tflite_float32"), match="failed")
    case("export", "stale temp dir from a killed export", "ok",
         setup=steps(copy_run(lambda ws: ws.run), lambda ws, s: (s / "export" / "tiny" / ".tmp-1-999999-x" / "tflite").mkdir(parents=True)),
         argv=exp("{s}/run", "--formats", "tflite_float32"),
         check=lambda ws, s, r: [] if not (s / "export" / "tiny" / ".tmp-1-999999-x").exists() and (s / "export" / "tiny" / "1").is_dir() else ["stale temp dir kept"])
    keras_file = lambda ws, s: shutil.copy(ws.run / "model.keras", s / "m.keras")  # noqa: E731
    labels = write("l.txt", "a\nb\nc\n")
    data = "numpy:{ws.npz}"
    case("export", ".keras file of garbage", "error", setup=steps(write("m.keras", b"garbage" * 100), labels),
         argv=exp("{s}/m.keras", "--labels", "{s}/l.txt", "--data", data), match="m.keras")
    case("export", ".keras without --labels", "error", setup=keras_file, argv=exp("{s}/m.keras", "--data", data), match="labels")
    case("export", ".keras with too few labels", "error", setup=steps(keras_file, write("l.txt", "a\nb\n")),
         argv=exp("{s}/m.keras", "--labels", "{s}/l.txt", "--data", data), match="label")
    case("export", ".keras with an empty labels file", "error", setup=steps(keras_file, write("l.txt", "")),
         argv=exp("{s}/m.keras", "--labels", "{s}/l.txt", "--data", data), match="l.txt|label")
    case("export", ".keras with --scale nan", "error", setup=steps(keras_file, labels),
         argv=exp("{s}/m.keras", "--labels", "{s}/l.txt", "--data", data, "--scale", "nan"), match="scale")
    case("export", ".keras with --scale -1", "error", setup=steps(keras_file, labels),
         argv=exp("{s}/m.keras", "--labels", "{s}/l.txt", "--data", data, "--scale", "-1"), match="scale")
    case("export", ".keras with --input-size 0 0", "error", setup=steps(keras_file, labels),
         argv=exp("{s}/m.keras", "--labels", "{s}/l.txt", "--data", data, "--input-size", "0", "0"), match="input.size")
    case("export", ".keras with --import of a missing module", "error", setup=steps(keras_file, labels),
         argv=exp("{s}/m.keras", "--labels", "{s}/l.txt", "--data", data, "--import", "no_such_module_xyz"), match="no_such_module_xyz")
    case("export", ".keras with --data of another image size", "error", setup=steps(keras_file, labels, npz_writer("o.npz", {
        "x_train": ("u8", (12, 28, 28, 1)), "y_train": [0, 1, 2] * 4, "x_test": ("u8", (6, 28, 28, 1)), "y_test": [0, 1, 2] * 2})),
         argv=exp("{s}/m.keras", "--labels", "{s}/l.txt", "--data", "numpy:{s}/o.npz"), match="28|size|shape")
    case("export", ".keras with --outputs probabilities for a logits model", "error", setup=steps(keras_file, labels),
         argv=exp("{s}/m.keras", "--labels", "{s}/l.txt", "--data", data, "--outputs", "probabilities", "--formats", "tflite_float32"),
         match="probabilities|softmax")
    case("export", "--version 0", "error", setup=copy_run(lambda ws: ws.run), argv=exp("{s}/run", "--version", "0"), match="version")

    # ---- verify
    def ver(*extra: str) -> Callable[[Workspace, Path], list[str]]:
        return lambda ws, s: ["verify", str(s / "v" / "tiny" / "1"), *extra]

    copy_version = steps(lambda ws, s: shutil.copytree(ws.root / "export" / "tiny", s / "v" / "tiny"))
    case("verify", "not a version dir", "error", setup=lambda ws, s: (s / "v" / "tiny" / "1").mkdir(parents=True), argv=ver(), match="model_card|version")
    case("verify", "artifact deleted", "error", setup=steps(copy_version, lambda ws, s: (s / "v/tiny/1/tflite/model_float32.tflite").unlink()),
         argv=ver(), match="model_float32.tflite")
    case("verify", "artifact bytes flipped", "error", setup=steps(copy_version, flip_bytes("v/tiny/1/tflite/model_float32.tflite")),
         argv=ver(), match="tflite")
    case("verify", "artifact swapped for another model's", "error",
         setup=steps(copy_version, lambda ws, s: shutil.copy(ws.other_version / "tflite" / "model_float32.tflite", s / "v/tiny/1/tflite/model_float32.tflite")),
         argv=ver(), match="tflite_float32")
    case("verify", "card is not JSON", "error", setup=steps(copy_version, write("v/tiny/1/model_card.json", "{broken")), argv=ver(), match="model_card.json")
    case("verify", "contract edited (input size)", "error", setup=steps(copy_version, edit_json("v/tiny/1/contract.json", ("input", "height"), 20)),
         argv=ver(), match="contract|height|shape|input")
    case("verify", "disk full writing the results", "error", setup=copy_version,
         patch=lambda: patched("tfcnn.export.verify.write_json", oserror(errno.ENOSPC)), argv=ver(), match="No space")
    case("verify", "--samples 0", "error", setup=copy_version, argv=ver("--samples", "0"), match="samples")
    case("verify", "--threads -1", "error", setup=copy_version, argv=ver("--threads", "-1"), match="threads")
    case("verify", "run directory gone", "error", setup=steps(copy_version, edit_json("v/tiny/1/model_card.json", ("source", "run_dir"), "/nonexistent/run")),
         argv=ver(), match="nonexistent|run")

    # ---- predict
    def pred(*args: str) -> Callable[[Workspace, Path], list[str]]:
        return lambda ws, s: ["predict", *[a.format(ws=ws, s=s) for a in args]]

    for k in ("0", "-2", "4"):
        case("predict", f"--top-k {k}", "error", argv=pred("{ws.run}", "{ws.images}/good.png", "--top-k", k), match="top-k")
    case("predict", "image missing", "error", argv=pred("{ws.run}", "{ws.images}/nope.png"), match="nope.png")
    case("predict", "folder without images", "error", argv=pred("{ws.run}", "{ws.images}/no_images"), match="no_images")
    case("predict", "source is not a run", "error", argv=pred("{ws.images}", "{ws.images}/good.png"), match="images")
    case("predict", "unknown --format", "error", argv=pred("{ws.version}", "{ws.images}/good.png", "--format", "tflite_int9"), match="tflite_int9")
    case("predict", "--format not in the version", "error", argv=pred("{ws.version}", "{ws.images}/good.png", "--format", "tflite_int8"), match="tflite_int8")
    case("predict", "--batch-size 0", "error", argv=pred("{ws.run}", "{ws.images}/good.png", "--batch-size", "0"), match="batch-size")
    case("predict", "--threads 0", "error", argv=pred("{ws.version}", "{ws.images}/good.png", "--threads", "0"), match="threads")
    case("predict", "NaN-weights model", "error", argv=pred("{ws.nan_run}", "{ws.images}/good.png"), match="non-finite|NaN")
    for bad in ("text.png", "empty.png", "truncated.png"):
        case("predict", f"good images and {bad}", "partial", argv=pred("{ws.run}", "{ws.images}/good.png", f"{{ws.images}}/{bad}", "--json"),
             check=partial_rows(bad))
    for fmt in ("savedmodel", "tflite_float32", "onnx"):
        case("predict", f"RGBA, JPEG and odd sizes via {fmt}", "ok",
             argv=pred("{ws.version}", "{ws.images}/good.png", "{ws.images}/rgba.png", "{ws.images}/large.jpg", "--format", fmt, "--json"),
             check=all_rows(3))
    case("predict", "--out into a folder not made yet", "ok", argv=pred("{ws.run}", "{ws.images}/good.png", "--json", "--out", "{s}/new/p.json"),
         check=lambda ws, s, r: [] if len(json.loads((s / "new" / "p.json").read_text())) == 1 else ["p.json wrong"])
    case("predict", "--out is a folder", "error", setup=lambda ws, s: (s / "d").mkdir(), argv=pred("{ws.run}", "{ws.images}/good.png", "--out", "{s}/d"), match="d")

    # ---- the other commands on wrong or damaged run directories
    for cmd in ("evaluate", "inspect", "report", "benchmark", "verify"):
        case("commands", f"{cmd} on a folder that is not a run", "error", setup=lambda ws, s: (s / "d").mkdir(),
             argv=lambda ws, s, c=cmd: [c, str(s / "d")], match="d")
    case("commands", "explain on a folder that is not a run", "error", setup=lambda ws, s: (s / "d").mkdir(),
         argv=lambda ws, s: ["explain", str(s / "d"), str(ws.images / "good.png")], match="d")
    case("commands", "explain --layer nosuch", "error", setup=copy_run(lambda ws: ws.run),
         argv=lambda ws, s: ["explain", str(s / "run"), str(ws.images / "good.png"), "--layer", "nosuch", "--methods", "gradcam"], match="nosuch")
    case("commands", "explain --classes 99", "error", setup=copy_run(lambda ws: ws.run),
         argv=lambda ws, s: ["explain", str(s / "run"), str(ws.images / "good.png"), "--classes", "99", "--methods", "gradcam"], match="99")
    case("commands", "explain --methods bogus", "error", setup=copy_run(lambda ws: ws.run),
         argv=lambda ws, s: ["explain", str(s / "run"), str(ws.images / "good.png"), "--methods", "bogus"], match="bogus")
    case("commands", "explain an unreadable image", "error", setup=copy_run(lambda ws: ws.run),
         argv=lambda ws, s: ["explain", str(s / "run"), str(ws.images / "text.png"), "--methods", "gradcam"], match="text.png")
    case("commands", "explain gradcam works", "ok", setup=copy_run(lambda ws: ws.run),
         argv=lambda ws, s: ["explain", str(s / "run"), str(ws.images / "good.png"), "--methods", "gradcam", "--out", str(s / "x")],
         check=lambda ws, s, r: [] if list((s / "x").glob("*.png")) else ["no PNG written"])
    case("commands", "benchmark --runs 0", "error", argv=lambda ws, s: ["benchmark", str(ws.version), "--runs", "0"], match="runs")
    case("commands", "evaluate without model.keras", "error", setup=steps(copy_run(lambda ws: ws.run), lambda ws, s: (s / "run" / "model.keras").unlink()),
         argv=lambda ws, s: ["evaluate", str(s / "run")], match="model.keras")
    def report_says(name: str) -> Callable[[Workspace, Path, Result], list[str]]:
        def check(ws: Workspace, s: Path, r: Result) -> list[str]:
            html = (s / "run" / "report.html").read_text()
            return [] if name in r.err and name in html else [f"{name} problem not in the report and on stderr"]

        return check

    case("commands", "report with corrupt metrics.json", "partial", setup=steps(copy_run(lambda ws: ws.run), write("run/metrics.json", "{nope")),
         argv=lambda ws, s: ["report", str(s / "run")], check=report_says("metrics.json"))
    case("commands", "report with a metrics.json of another schema", "partial",
         setup=steps(copy_run(lambda ws: ws.run), write("run/metrics.json", '{"schema": "tfcnn.metrics/99"}')),
         argv=lambda ws, s: ["report", str(s / "run")], check=report_says("tfcnn.metrics/99"))
    case("commands", "evaluate with config.json edited to NaN", "error",
         setup=steps(copy_run(lambda ws: ws.run), edit_json("run/config.json", ("train", "learning_rate"), "NaN-marker")),
         argv=lambda ws, s: ["evaluate", str(s / "run")], match="learning_rate|config.json")
    case("commands", "unknown command", "error", argv=lambda ws, s: ["trian", str(ws.pipeline)], match="trian")


def define_selftest() -> None:
    """Cases built to fail, one per bad outcome: the judge must call each by its name."""
    from tfcnn.errors import TfcnnError

    def raise_(exc: BaseException) -> Callable[[Workspace, Path], None]:
        def do(ws: Workspace, s: Path) -> None:
            raise exc

        return do

    def writes_then_fails(ws: Workspace, s: Path) -> None:
        (ws.root / "stray.txt").write_text("half")
        raise TfcnnError("selftest: refused after writing")

    def leaves_temp(ws: Workspace, s: Path) -> None:
        (ws.root / ".tmp-selftest").mkdir()

    case("selftest", "traceback", "error", call=raise_(ValueError("deep inside")))
    case("selftest", "silently_wrong", "error", call=lambda ws, s: None)
    case("selftest", "half_written", "error", call=writes_then_fails, match="refused")
    case("selftest", "unclear_error", "error", call=raise_(TfcnnError("selftest: some other complaint")), match="the key it should name")
    case("selftest", "wrongly_refused", "ok", call=raise_(TfcnnError("selftest: no")))
    case("selftest", "crash", "error", call=lambda ws, s: os.kill(os.getpid(), signal.SIGSEGV))
    case("selftest", "half_written", "ok", call=leaves_temp)
    case("selftest", "silently_wrong", "ok", call=lambda ws, s: None, check=lambda ws, s, r: ["the result is wrong"])
    case("selftest", "clean_error", "error", call=raise_(TfcnnError("selftest: the key it should name is wrong")), match="the key")
    case("selftest", "worked", "ok", call=lambda ws, s: None, check=lambda ws, s, r: [])


# ---- setup helpers (module level so the cases above stay one line each)


def npz_writer(name: str, arrays: dict[str, Any]) -> Callable[[Workspace, Path], None]:
    def do(ws: Workspace, s: Path) -> None:
        import numpy as np

        out = {}
        for k, v in arrays.items():
            if isinstance(v, tuple):
                kind, shape = v
                if kind == "u8":
                    out[k] = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
                elif kind == "nan":
                    out[k] = np.full(shape, np.nan, np.float32)
                else:
                    out[k] = np.array(["x"] * shape[0])
            else:
                out[k] = np.array(v)
        np.savez(s / name, **out)

    return do


def folder_with(bad: bytes | str | None = None, classes: int = 3, broken_class: bool = False) -> Callable[[Workspace, Path], None]:
    """A copy of the good image folder with one bad file (or one class of only bad files)."""

    def do(ws: Workspace, s: Path) -> None:
        import numpy as np
        from PIL import Image

        for label in ["a", "b", "c"][:classes]:
            shutil.copytree(ws.folder / "ok" / label, s / "f" / label)
        if broken_class:
            for p in (s / "f" / "c").iterdir():
                p.write_bytes(p.read_bytes()[:20])
        if bad is None:
            return
        if bad == "truncated":
            data = next((ws.folder / "ok" / "a").iterdir()).read_bytes()[:60]
        elif bad == "garbled":
            buf = io.BytesIO()
            Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, "JPEG", quality=90)
            raw = bytearray(buf.getvalue())
            raw[len(raw) // 2 : len(raw) // 2 + 40] = bytes(40)
            data = bytes(raw)
        elif bad == "bomb":
            buf = io.BytesIO()
            Image.new("L", (15000, 15000)).save(buf, "PNG")  # 225 Mpixel: over Pillow's bomb limit
            data = buf.getvalue()
        else:
            data = bad  # type: ignore[assignment]
        ext = {"garbled": "jpg", "bomb": "png"}.get(bad if isinstance(bad, str) else "", "png")
        if isinstance(bad, bytes) and bad.startswith(bytes(range(10))):
            ext = "bmp"
        (s / "f" / "a" / f"bad.{ext}").write_bytes(data)

    return do


def skipped_listed(ws: Workspace, s: Path, r: Result) -> list[str]:
    data = json.loads((s / "out" / "data.json").read_text())
    skipped = json.dumps(data.get("skipped", []))
    problems = [] if "bad." in skipped else [f"bad file not in data.json's skipped list: {skipped[:200]}"]
    if "bad." not in r.err:
        problems.append("the skip was not printed")
    return problems


def idx_copy(truncate: bool = False, magic: bool = False, short_labels: bool = False) -> Callable[[Workspace, Path], None]:
    def do(ws: Workspace, s: Path) -> None:
        shutil.copytree(ws.fashion_idx, s / "idx")
        imgs = s / "idx" / "train-images-idx3-ubyte"
        raw = bytearray(imgs.read_bytes())
        if truncate:
            raw = raw[: len(raw) - 1000]
        if magic:
            raw[:4] = (1234).to_bytes(4, "big")
        imgs.write_bytes(bytes(raw))
        if short_labels:
            lab = s / "idx" / "train-labels-idx1-ubyte"
            raw = bytearray(lab.read_bytes())
            raw[4:8] = (59).to_bytes(4, "big")
            lab.write_bytes(bytes(raw[:-1]))

    return do


def flip_bytes(rel: str) -> Callable[[Workspace, Path], None]:
    def do(ws: Workspace, s: Path) -> None:
        p = s / rel
        raw = bytearray(p.read_bytes())
        for i in range(len(raw) // 3, len(raw) // 3 + 64):
            raw[i] ^= 0xFF
        p.write_bytes(bytes(raw))

    return do


def edit_json(rel: str, path: tuple[str, ...], value: Any) -> Callable[[Workspace, Path], None]:
    def do(ws: Workspace, s: Path) -> None:
        p = s / rel
        data = json.loads(p.read_text())
        node = data
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        text = json.dumps(data, indent=1)
        p.write_text(text.replace('"NaN-marker"', "NaN"))

    return do


def segfault(*args: Any, **kwargs: Any) -> None:
    """Stands in for a converter that dies of SIGSEGV (tfcnn runs converters in a child process)."""
    os.kill(os.getpid(), signal.SIGSEGV)


def explode(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("converter exploded")


def metrics_say(run_dir: Path, seed: int) -> list[str]:
    cfg = json.loads((run_dir / "config.json").read_text())
    problems = [] if cfg["train"]["seed"] == seed else [f"config.json still says seed {cfg['train']['seed']}"]
    if not (run_dir / "metrics.json").is_file():
        problems.append("no metrics.json")
    return problems


def partial_rows(bad: str) -> Callable[[Workspace, Path, Result], list[str]]:
    def check(ws: Workspace, s: Path, r: Result) -> list[str]:
        rows = json.loads(r.out)
        good = [row for row in rows if not row.get("error")]
        errs = [row for row in rows if row.get("error")]
        problems = []
        if len(good) != 1 or not good[0].get("top_k"):
            problems.append(f"the good image was not predicted: {r.out[:200]}")
        if len(errs) != 1 or bad not in json.dumps(errs):
            problems.append(f"no error row for {bad}")
        return problems

    return check


def all_rows(n: int) -> Callable[[Workspace, Path, Result], list[str]]:
    def check(ws: Workspace, s: Path, r: Result) -> list[str]:
        rows = json.loads(r.out)
        problems = [] if len(rows) == n and all(row.get("top_k") and not row.get("error") for row in rows) else [f"rows: {r.out[:300]}"]
        for row in rows:
            p = [t.get("probability") for t in row.get("top_k", [])]
            if not all(isinstance(v, float) and math.isfinite(v) and 0 <= v <= 1 for v in p):
                problems.append(f"bad probabilities {p}")
        return problems

    return check


def train_model_call(ws: Workspace, epochs: int = 1, nan: bool = False, bad_labels: bool = False) -> Any:
    import numpy as np
    import tensorflow as tf

    import tfcnn

    x, y = synthetic(64, seed=3)
    x = x.astype(np.float32) / 255.0
    if nan:
        x[:] = np.nan
    if bad_labels:
        y = y + 5
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    import keras

    inputs = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))
    return tfcnn.train_model(model, ds, epochs=epochs)


def train_model_nan(ws: Workspace, s: Path) -> Any:
    return train_model_call(ws, nan=True)


def train_model_bad_labels(ws: Workspace, s: Path) -> Any:
    return train_model_call(ws, bad_labels=True)


# --------------------------------------------------------------------------- judging


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Size and SHA-256 of every file under root (directories as size -1)."""
    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = (-1, "")
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):
                continue
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[os.path.relpath(p, root)] = (os.path.getsize(p), h.hexdigest())
    return out


def temp_leftovers(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """New hidden entries (tfcnn's temp files and dirs are hidden: .tmp-*, .<name>.<random>)."""
    return sorted(p for p in set(after) - set(before) if any(part.startswith(".") for part in Path(p).parts))


def invoke(c: Case, ws: Workspace, scratch: Path) -> Result:
    from tfcnn.cli import main
    from tfcnn.errors import TfcnnError

    out, err = io.StringIO(), io.StringIO()
    patch = c.patch() if c.patch else contextlib.nullcontext()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), patch:
        try:
            if c.argv is not None:
                rc = main(c.argv(ws, scratch))
            else:
                assert c.call is not None
                c.call(ws, scratch)
                rc = 0
        except SystemExit as exc:  # argparse's usage errors
            rc = exc.code if isinstance(exc.code, int) else 2
        except TfcnnError as exc:  # the library API's one-line errors
            print(f"tfcnn api: error: {exc}", file=sys.stderr)
            rc = 2
        except BaseException as exc:  # noqa: BLE001 - anything else escaping is the finding
            import traceback

            return Result(1, out.getvalue(), err.getvalue(), "".join(traceback.format_exception(exc))[-2000:])
    return Result(int(rc or 0), out.getvalue(), err.getvalue())


def judge(c: Case, r: Result, changed: list[str], leftovers: list[str], problems: list[str]) -> tuple[str, str]:
    """(outcome, detail) by the rules in the module docstring."""
    if r.exc or "Traceback (most recent call last)" in r.err:
        return "traceback", (r.exc or r.err)[-600:]
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    if c.expect == "error":
        if r.rc == 0:
            return "silently_wrong", "exit 0 on bad input: " + (r.out + r.err)[-300:]
        errors = [ln for ln in lines if ERROR_LINE.match(ln)]
        if len(errors) != 1 or not re.search(c.match, errors[0], re.IGNORECASE):
            return "unclear_error", " | ".join(lines[-3:])[-500:]
        if changed or leftovers:
            return "half_written", f"changed {changed[:5]} left {leftovers[:5]}"
        return "clean_error", errors[0][:300]
    want_rc = 0 if c.expect == "ok" else 1
    if r.rc != want_rc:
        return "wrongly_refused", f"exit {r.rc}: " + " | ".join(lines[-3:])[-500:]
    if leftovers:
        return "half_written", f"left {leftovers[:5]}"
    if problems:
        return "silently_wrong", "; ".join(problems)[:500]
    return "worked", ""


def run_case(c: Case, ws: Workspace, scratch_root: Path) -> dict[str, Any]:
    scratch = scratch_root / re.sub(r"[^\w.-]+", "_", c.id)
    scratch.mkdir(parents=True)
    started = time.perf_counter()
    try:
        if c.setup:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                c.setup(ws, scratch)
    except BaseException as exc:  # noqa: BLE001 - a broken case is reported, not counted as tfcnn's
        return {"case": c.id, "outcome": "setup_failed", "detail": repr(exc)[:300], "seconds": 0.0}
    before = {**snapshot(ws.root)}
    r = invoke(c, ws, scratch)
    after = snapshot(ws.root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    leftovers = temp_leftovers(before, after)
    problems: list[str] = []
    if c.check and not r.exc and r.rc in (0, 1):
        try:
            problems = c.check(ws, scratch, r)
        except Exception as exc:  # noqa: BLE001 - an unreadable result is a wrong result
            problems = [f"check could not read the result: {exc!r}"[:300]]
    if c.expect != "error":
        changed = []
    outcome, detail = judge(c, r, changed, leftovers, problems)
    shutil.rmtree(scratch, ignore_errors=True)
    return {"case": c.id, "outcome": outcome, "detail": detail, "seconds": round(time.perf_counter() - started, 2)}


# --------------------------------------------------------------------------- driver


def selected(only: list[str], selftest: bool = False) -> list[Case]:
    define_cases()
    if selftest and not any(c.family == "selftest" for c in CASES):
        define_selftest()
    if not only:
        return list(CASES)
    return [c for c in CASES if any(re.search(p, c.id) for p in only)]


def worker(ws_root: Path, results: Path, only: list[str], start: int, selftest: bool = False) -> None:
    """Run the selected cases from index `start`, one JSON line each (flushed before the next)."""
    import logging

    logging.getLogger("tfcnn").setLevel(logging.INFO)
    ws = Workspace(ws_root)
    cases = selected(only, selftest)
    scratch_root = Path(tempfile.mkdtemp(prefix="cases-", dir=ws_root.parent))
    with open(results, "a") as fh:
        for i in range(start, len(cases)):
            fh.write(json.dumps({"start": i, "case": cases[i].id}) + "\n")
            fh.flush()
            row = run_case(cases[i], ws, scratch_root)
            fh.write(json.dumps({"index": i, **row}) + "\n")
            fh.flush()
    shutil.rmtree(scratch_root, ignore_errors=True)


def drive(ws_root: Path, only: list[str], timeout: float, selftest: bool = False) -> list[dict[str, Any]]:
    """Run the worker until every case has a row; a worker killed by a signal crashed on its case."""
    results = ws_root.parent / "results.jsonl"
    results.unlink(missing_ok=True)
    cases = selected(only, selftest)
    rows: dict[int, dict[str, Any]] = {}
    start = 0
    while start < len(cases):
        cmd = [sys.executable, __file__, "--worker", "--workspace", str(ws_root), "--results", str(results), "--from", str(start)]
        cmd += [a for p in only for a in ("--only", p)] + (["--selftest"] if selftest else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            rc, tail = proc.returncode, proc.stderr[-600:]
        except subprocess.TimeoutExpired:
            rc, tail = -9, f"timed out after {timeout:.0f} s"
        current = start
        for line in results.read_text().splitlines():
            rec = json.loads(line)
            if "index" in rec:
                rows[rec["index"]] = rec
            elif "start" in rec:
                current = rec["start"]
        if rc == 0 and len(rows) >= len(cases) - start:
            break
        if current not in rows:
            why = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"worker exit {rc}"
            rows[current] = {"case": cases[current].id, "outcome": "crash", "detail": f"{why}: {tail}", "seconds": 0.0}
            print(f"  {cases[current].id}: CRASH ({why})", file=sys.stderr)
        start = current + 1
        results.unlink()
    return [rows[i] for i in sorted(rows)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], help="regex on case ids (family/name); repeatable")
    ap.add_argument("--list", action="store_true", help="print the case ids and exit")
    ap.add_argument("--keep", type=Path, help="build the workspace here and keep it")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per worker process")
    ap.add_argument("--light", action="store_true", help="no trained runs in the workspace (config and pipeline-file cases only)")
    ap.add_argument("--selftest", action="store_true", help="add cases built to fail, to check the judge (reported apart)")
    ap.add_argument("--show", action="store_true", help="print every case's detail (the error line), not only the bad ones")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--from", dest="start", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.workspace, args.results, args.only, args.start, args.selftest)
        return 0
    if args.list:
        for c in selected(args.only, args.selftest):
            print(f"{c.id}\t{c.expect}")
        return 0

    from machine import describe

    started = time.perf_counter()
    base = args.keep or Path(tempfile.mkdtemp(prefix="tfcnn-reliability-"))
    ws_root = base / "ws"
    if not ws_root.exists():
        print("building the workspace (two tiny runs, exported and verified) ...", file=sys.stderr)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(BENCH)!r}); import reliability; "
                               f"reliability.build_workspace(__import__('pathlib').Path({str(ws_root)!r}), light={args.light})"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            print("reliability: error: could not build the workspace (see above)", file=sys.stderr)
            return 2
        print(f"  workspace ready in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    rows = drive(ws_root, args.only, args.timeout, args.selftest)
    counts = {o: 0 for o in (*OUTCOMES, "setup_failed")}
    families: dict[str, dict[str, int]] = {}
    selftest = [{"case": r["case"], "outcome": r["outcome"]} for r in rows if r["case"].startswith("selftest/")]
    rows = [r for r in rows if not r["case"].startswith("selftest/")]
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
        fam = families.setdefault(row["case"].split("/")[0], {})
        fam[row["outcome"]] = fam.get(row["outcome"], 0) + 1
        mark = "ok " if row["outcome"] in GOOD else "BAD"
        shown = row["outcome"] not in GOOD or (args.show and row["detail"])
        print(f"{mark} {row['outcome']:<15} {row['seconds']:6.1f}s  {row['case']}" + (f"\n      {row['detail']}" if shown else ""))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    bad = sum(v for k, v in counts.items() if k not in GOOD)
    summary = {
        "bench": "reliability", "machine": describe(), "cases": len(rows), "bad": bad,
        **{k: v for k, v in counts.items()}, "families": families, "seconds": round(time.perf_counter() - started, 1),
    }
    if args.selftest:
        summary["selftest"] = selftest
        summary["selftest_ok"] = all(r["case"].split("/")[1] == r["outcome"] for r in selftest) and len(selftest) == 10
    print(json.dumps(summary))
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
