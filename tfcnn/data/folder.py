"""An image folder as a source: ``folder:<dir>`` with one sub-folder per class.

Layouts: ``<dir>/<class>/*.jpg`` (a stratified ``data.test_fraction`` is held out as the test
split) or ``<dir>/train/<class>/...`` plus ``<dir>/test/<class>/...``. Class ids follow the
sorted class-folder names, like ``keras.utils.image_dataset_from_directory``. Sub-folders inside a
class folder are searched too. Unreadable files never stop a run: they are skipped and listed in
``DataInfo.skipped`` with the reason (the run's data.json), and the count with the first few
reasons is logged. What counts as unreadable is defined in :mod:`tfcnn.data.images`: any decoder
failure, an image over the decompression-bomb limit, a decode that succeeds only with a warning,
and a JPEG with damaged compressed data. Damaged files are skipped, never trained on. A class
folder whose every file is unreadable is an error naming the class and the first reasons.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfcnn.data.arrays import Progress, most_common_size
from tfcnn.data.images import IMAGE_EXTENSIONS, RESIZE_METHOD, ImageHeader, conform_image, decode_image, probe_image
from tfcnn.errors import DataError
from tfcnn.util import log

PROGRESS_FROM = 200  # files; below this decoding is quick enough to stay quiet
SHOW_SKIPPED = 5  # skipped files named in the log and in errors; the rest are in data.json


@dataclass
class FolderImages:
    """Decoded folder contents, all at one size and channel count."""

    class_names: list[str]
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray] | None  # None: no test/ folder, hold out a fraction
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_folder(
    root: str | Path, size: tuple[int, int] | None = None, channels: int | None = None
) -> FolderImages:
    """Decode every image under `root`; `size`/`channels` None pick the defaults described in notes."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"folder:{root}: no such directory; point data.source at a folder of class sub-folders")
    subdirs = _subdirs(root)
    split_layout = {"train", "test"} <= {d.name for d in subdirs}
    if split_layout:
        class_names = [d.name for d in _subdirs(root / "train")]
        test_classes = [d.name for d in _subdirs(root / "test")]
        unknown = sorted(set(test_classes) - set(class_names))
        if unknown:
            raise DataError(
                f"folder:{root}: test/{unknown[0]} has no matching train/{unknown[0]} folder; "
                "train/ and test/ must use the same class folder names"
            )
        layout = {"train": root / "train", "test": root / "test"}
    else:
        class_names = [d.name for d in subdirs]
        layout = {"train": root}
    where = f"folder:{root}" + ("/train" if split_layout else "")
    if len(class_names) < 2:
        found = f"found only {class_names[0]!r}" if class_names else "found none"
        raise DataError(f"{where} needs one sub-folder per class and at least 2 classes; {found}")

    skipped: list[dict[str, str]] = []
    files: dict[str, list[tuple[Path, int]]] = {}
    for split, base in layout.items():
        files[split] = []
        for label, name in enumerate(class_names):
            cdir = base / name
            if not cdir.is_dir():  # a class absent from test/ is allowed
                continue
            found = _image_files(cdir, skipped)
            if not found:
                raise DataError(
                    f"folder:{cdir} holds no JPEG/PNG/BMP/GIF images; add images or remove the empty class folder"
                )
            files[split].extend((p, label) for p in found)

    # Pass 1: headers only, to pick the default size and channel count before decoding.
    everything = [p for split in files.values() for p, _ in split]
    probes: dict[Path, ImageHeader] = {}
    for p in everything:
        try:
            probes[p] = probe_image(p)
        except DataError as exc:
            skipped.append({"file": str(p), "reason": _reason(exc, p)})
    if not probes:
        raise DataError(
            f"folder:{root}: none of the {len(everything)} image files could be read: {_first_reasons(skipped, root)}"
        )
    notes = []
    sizes = [h.size for h in probes.values()]
    if size is None:
        size = most_common_size(sizes)
        differ = sum(s != size for s in sizes)
        notes.append(
            f"image size {size[0]}x{size[1]} (the most common size; {differ} of {len(sizes)} images resized "
            f"with {RESIZE_METHOD}; set data.image_size to choose)"
        )
    else:
        size = (int(size[0]), int(size[1]))
        differ = sum(s != size for s in sizes)
        if differ:
            notes.append(f"{differ} of {len(sizes)} images resized to {size[0]}x{size[1]} with {RESIZE_METHOD}")
    if channels is None:
        colour = sum(h.colour for h in probes.values())
        channels = 3 if colour else 1
        notes.append(
            f"channels {channels} ({colour} of {len(probes)} images are colour"
            + ("; grey images replicated to RGB" if colour and colour < len(probes) else "")
            + "; set data.channels to choose)"
        )
    transparent = sum(h.alpha for h in probes.values())
    if transparent:
        notes.append(f"{transparent} images with transparency composited over black")

    decoded = _decode_all([p for p in everything if p in probes], size, channels, skipped)
    out: dict[str, tuple[np.ndarray, np.ndarray] | None] = {"test": None}
    for split, pairs in files.items():
        kept = [(decoded[p], label) for p, label in pairs if p in decoded]
        present = {label for _, label in kept}
        for label, name in enumerate(class_names):
            cdir = layout[split] / name
            if cdir.is_dir() and label not in present:
                mine = {str(p) for p, lab in pairs if lab == label}
                reasons = [s for s in skipped if s["file"] in mine]
                raise DataError(
                    f"folder:{cdir}: every image in this class folder was unreadable (class {name!r}, "
                    f"{len(mine)} image file{'s' if len(mine) != 1 else ''}): {_first_reasons(reasons, cdir, more='')}"
                )
        x = np.stack([a for a, _ in kept]) if kept else np.zeros((0, *size, channels), np.uint8)
        y = np.asarray([label for _, label in kept], dtype=np.int32)
        out[split] = (x, y)
    if skipped:
        notes.append(f"{len(skipped)} unreadable or non-image files skipped")
        log.warning(
            "data: folder:%s: %d of %d files skipped: %s",
            root,
            len(skipped),
            len(everything) + sum(not s["file"].lower().endswith(IMAGE_EXTENSIONS) for s in skipped),
            _first_reasons(skipped, root),
        )
    return FolderImages(class_names, out["train"], out["test"], skipped, notes)  # type: ignore[arg-type]


def _subdirs(path: Path) -> list[Path]:
    return sorted((d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _image_files(cdir: Path, skipped: list[dict[str, str]]) -> list[Path]:
    """Image files under a class folder, sorted; other visible files are reported as skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(cdir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            p = Path(dirpath) / fn
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(p)
            else:
                skipped.append({"file": str(p), "reason": f"not a JPEG/PNG/BMP/GIF file (extension {p.suffix or 'none'!r})"})
    return found


def _decode_all(
    paths: list[Path], size: tuple[int, int], channels: int, skipped: list[dict[str, str]]
) -> dict[Path, np.ndarray]:
    """Decode, resize and convert in a thread pool (Pillow releases the GIL while decoding)."""

    def work(p: Path) -> tuple[np.ndarray | None, str | None]:
        try:
            return conform_image(decode_image(p), size, channels), None
        except DataError as exc:
            return None, _reason(exc, p)

    bar = Progress(len(paths), f"decoding {len(paths)} image files", threshold=PROGRESS_FROM, unit="file")
    out: dict[Path, np.ndarray] = {}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, (p, (arr, reason)) in enumerate(zip(paths, pool.map(work, paths))):
            if arr is not None:
                out[p] = arr
            else:
                skipped.append({"file": str(p), "reason": reason or "unreadable"})
            bar.step(i + 1)
    return out


def _first_reasons(skipped: list[dict[str, str]], base: Path, more: str = ": see data.json") -> str:
    """The first SHOW_SKIPPED skipped files with their reasons, paths relative to `base`."""

    def name(file: str) -> str:
        try:
            return str(Path(file).relative_to(base))
        except ValueError:
            return file

    shown = "; ".join(f"{name(s['file'])} ({s['reason']})" for s in skipped[:SHOW_SKIPPED])
    rest = len(skipped) - SHOW_SKIPPED
    return shown + (f"; ... and {rest} more{more}" if rest > 0 else "")


def _reason(exc: DataError, path: Path) -> str:
    """The DataError text without the leading path (the skipped entry names the file already)."""
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text
