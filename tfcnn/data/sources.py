"""The data source registry: each ``data.source`` kind is registered here once.

A :class:`Source` says how ``data.source`` names it (a bare name such as ``fashion_mnist``, or
``kind:<arg>`` such as ``folder:<dir>``), what can be checked without reading anything (the
"data" check of :func:`tfcnn.config.validate`, run again by :func:`tfcnn.data.load_data`) and
how it loads. Loaders import their readers (numpy, Pillow, TensorFlow) when called, so
``import tfcnn.data`` registers every kind without loading TensorFlow.

Every loader ends in :func:`tfcnn.data.inmemory.from_arrays`; the layouts each reader accepts are
described in its module: :mod:`tfcnn.data.builtin` (``fashion_mnist``, ``mnist``),
:mod:`tfcnn.data.idx`, :mod:`tfcnn.data.tfds_source`, :mod:`tfcnn.data.folder` and
:mod:`tfcnn.data.npz`. Detection / segmentation loaders (``fashion_scenes``, ``shapes``:
:mod:`tfcnn.data.scenes`; ``coco:<file.json>``: :mod:`tfcnn.data.coco_format`;
``tfds_detection:<name>``: :mod:`tfcnn.data.tfds_detection`; ``masks:<dir>``:
:mod:`tfcnn.data.mask_folder`; ``tfds_segmentation:<name>``: :mod:`tfcnn.data.tfds_segmentation`) end in
:func:`tfcnn.data.inmemory.from_label_arrays` instead, and :func:`check_data` refuses the
``data.augment`` keys their labels cannot follow (:func:`label_kind_of` says which labels a
config's source gives).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from tfcnn import config as config_mod
from tfcnn.config import DataConfig, PipelineConfig
from tfcnn.errors import ConfigError, DataError
from tfcnn.util import Registry

if TYPE_CHECKING:
    from tfcnn.data.bundle import DataBundle

Loader = Callable[[DataConfig, Optional[str]], "DataBundle"]  # (data config, argument or None) -> bundle
SourceCheck = Callable[[DataConfig, Optional[str]], None]  # raises ConfigError; must not read files


@dataclass(frozen=True)
class Source:
    """One kind of ``data.source``."""

    name: str
    load: Loader
    arg: str | None = None  # what follows "name:" (shown as name:<arg>); None: a bare name
    check: SourceCheck | None = None
    summary: str = ""

    @property
    def form(self) -> str:
        """How a pipeline file spells it: ``fashion_mnist`` or ``folder:<dir>``."""
        return self.name if self.arg is None else f"{self.name}:<{self.arg}>"


SOURCES: Registry = Registry("data source kind", "data.source")


def register_source(
    name: str, *, arg: str | None = None, check: SourceCheck | None = None, summary: str = ""
) -> Callable[[Loader], Loader]:
    """Decorator registering a loader as the ``data.source`` kind `name` (a taken name is refused).

    `arg` None makes it a bare name; otherwise the source is written ``name:<arg>`` and the
    loader receives the text after the first colon. `check(cfg, arg)` may refuse a config
    without I/O; `load(cfg, arg)` returns a DataBundle (usually through ``from_arrays``).
    """
    if not name or ":" in name:
        raise ValueError(f"a data source kind needs a name without ':', got {name!r}")

    def deco(load: Loader) -> Loader:
        SOURCES.register(name, Source(name, load, arg, check, summary))
        return load

    return deco


def forms() -> str:
    """Every registered spelling, for error lines: 'fashion_mnist', ..., or 'numpy:<file.npz>'."""
    quoted = [f"'{s.form}'" for s in SOURCES.values()]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def parse_source(text: str) -> tuple[Source, str | None]:
    """(registered kind, argument or None) of a ``data.source`` value, or one ConfigError line."""
    bare = SOURCES.get(text)
    if bare is not None and bare.arg is None:
        return bare, None
    kind, sep, arg = text.partition(":")
    source = SOURCES.get(kind)
    if source is None:
        close = difflib.get_close_matches(kind, list(SOURCES), n=1)
        hint = f" (did you mean '{SOURCES[close[0]].form}'?)" if close else ""
        raise ConfigError(f"data.source = {text!r} is not understood{hint}; use {forms()}")
    if source.arg is None:
        raise ConfigError(f"data.source = {text!r}: {kind} takes no argument; use '{kind}' (a directory goes in data.path)")
    if not arg.strip():
        raise ConfigError(f"data.source = {text!r} needs an argument after '{kind}:'; use '{source.form}'")
    return source, arg


def check_source(cfg: DataConfig) -> Source:
    """Parse ``cfg.source`` and run its kind's no-I/O check; returns the kind."""
    source, arg = parse_source(cfg.source)
    if source.check is not None:
        source.check(cfg, arg)
    return source


SCENE_SOURCES = ("fashion_scenes", "shapes")
BOX_SOURCES = ("coco", "tfds_detection")
MASK_SOURCES = ("masks", "tfds_segmentation")


def label_kind_of(cfg: DataConfig, task: str | None = None) -> str:
    """"classes", "boxes" or "masks": what the labels of ``cfg.source`` are. Scene sources follow
    ``data.scenes.labels`` (resolved from the task by config validation; `task` resolves "auto"
    here too), COCO and TFDS detection sources are boxes, every other source classes."""
    kind = cfg.source.partition(":")[0]
    if kind in SCENE_SOURCES:
        labels = cfg.scenes.labels
        if labels == "auto":
            labels = "masks" if task == "segmentation" else "boxes"
        return labels
    if kind in MASK_SOURCES:
        return "masks"
    return "boxes" if kind in BOX_SOURCES else "classes"


def check_data(cfg: PipelineConfig) -> None:
    """The "data" check of :func:`tfcnn.config.validate` (source, then augment keys vs. labels)."""
    check_source(cfg.data)
    kind = label_kind_of(cfg.data, cfg.task)
    if kind != "classes":
        from tfcnn.data.boxes import check_label_augments

        check_label_augments(cfg.data.augment, kind)


config_mod.register_check("data", check_data)


# --------------------------------------------------------------------------- per-kind checks


def _path_is_a_directory_name(cfg: DataConfig, arg: str | None) -> None:
    if cfg.path is not None and not cfg.path.strip():
        raise ConfigError("data.path is empty; remove it or give a directory")


def _no_data_path(what: str) -> SourceCheck:
    def check(cfg: DataConfig, arg: str | None) -> None:
        if cfg.path is not None:
            kind = cfg.source.partition(":")[0]
            raise ConfigError(
                f"data.path = {cfg.path!r} is not read by {kind}: sources (the {what} is the part after "
                f"'{kind}:' in data.source); remove data.path"
            )

    return check


# A TFDS builder name: optional "namespace:", snake_case name, optional "/config", optional ":x.y.z".
_TFDS_NAME = re.compile(r"^([a-z][a-z0-9_]*:)?[a-z][a-z0-9_]*(/[A-Za-z0-9_.+-]+)?(:[0-9]+(\.([0-9]+|\*)){2})?$")


def _check_tfds(cfg: DataConfig, arg: str | None) -> None:
    _path_is_a_directory_name(cfg, arg)
    if not _TFDS_NAME.match(arg or ""):
        raise ConfigError(
            f"data.source = {cfg.source!r}: {arg!r} is not a TensorFlow Datasets name; use a lowercase "
            "snake_case name such as 'tfds:cifar10' (optionally '/config' and ':version', e.g. 'tfds:mnist:3.*.*')"
        )


def _check_numpy(cfg: DataConfig, arg: str | None) -> None:
    _no_data_path("file")(cfg, arg)
    if Path(arg or "").suffix.lower() == ".npy":
        raise ConfigError(
            f"data.source = {cfg.source!r} names a single-array .npy file; save x_train, y_train "
            "(and x_test, y_test, class_names) into one .npz with np.savez and use 'numpy:<file.npz>'"
        )


# --------------------------------------------------------------------------- the kinds


def _named(name: str) -> Loader:
    """fashion_mnist / mnist: local IDX files (data.path, $TFCNN_DATA_DIR, Debian), else TFDS."""

    def load(cfg: DataConfig, arg: str | None) -> "DataBundle":
        from tfcnn.data import builtin, idx, tfds_source
        from tfcnn.data.inmemory import from_arrays, from_tfds_dict

        kind, found = builtin.locate(name, cfg.path, lambda n: tfds_source.load_tfds(n))
        if kind == "idx":
            train, test = idx.load_idx_dir(found)  # type: ignore[arg-type]
            return from_arrays(cfg, train, test, builtin.CLASS_NAMES[name], source=f"{name} (idx:{found})")
        loaded = dict(found)  # type: ignore[call-overload]
        loaded["class_names"] = builtin.CLASS_NAMES[name]
        return from_tfds_dict(cfg, loaded)

    return load


register_source(
    "fashion_mnist",
    check=_path_is_a_directory_name,
    summary="Fashion-MNIST from data.path, $TFCNN_DATA_DIR, the Debian package or TFDS",
)(_named("fashion_mnist"))
register_source(
    "mnist", check=_path_is_a_directory_name, summary="MNIST from data.path, $TFCNN_DATA_DIR, the Debian package or TFDS"
)(_named("mnist"))


@register_source("idx", arg="dir", check=_no_data_path("directory"), summary="a directory of MNIST-layout IDX files")
def _load_idx(cfg: DataConfig, arg: str | None) -> "DataBundle":
    from tfcnn.data import idx
    from tfcnn.data.inmemory import from_arrays

    directory = Path(arg or "")
    train, test = idx.load_idx_dir(directory)
    names = idx.read_class_names(directory)
    return from_arrays(cfg, train, test, names, source=f"idx:{directory.resolve()}")


@register_source("tfds", arg="name", check=_check_tfds, summary="a TensorFlow Datasets image classification set")
def _load_tfds(cfg: DataConfig, arg: str | None) -> "DataBundle":
    from tfcnn.data import tfds_source
    from tfcnn.data.inmemory import from_tfds_dict

    return from_tfds_dict(cfg, tfds_source.load_tfds(arg or "", data_dir=cfg.path))


@register_source("folder", arg="dir", check=_no_data_path("directory"), summary="one sub-folder of images per class")
def _load_folder(cfg: DataConfig, arg: str | None) -> "DataBundle":
    from tfcnn.data import folder
    from tfcnn.data.inmemory import from_arrays

    root = Path(arg or "")
    size = tuple(cfg.image_size) if cfg.image_size else None
    f = folder.read_folder(root, size, cfg.channels)  # type: ignore[arg-type]
    return from_arrays(
        cfg, f.train, f.test, f.class_names, source=f"folder:{root.resolve()}", skipped=f.skipped, notes=f.notes
    )


@register_source("numpy", arg="file.npz", check=_check_numpy, summary="an .npz of x_train, y_train[, x_test, y_test]")
def _load_numpy(cfg: DataConfig, arg: str | None) -> "DataBundle":
    from tfcnn.data import npz
    from tfcnn.data.inmemory import from_arrays

    d = npz.read_npz(arg or "")
    return from_arrays(cfg, d["train"], d["test"], d["class_names"], source=f"numpy:{Path(arg or '').resolve()}")


@register_source(
    "reference",
    arg="file.npz",
    check=_check_numpy,
    summary="the images an export of an outside-trained model is calibrated and verified on (tfcnn.export_model)",
)
def _load_reference(cfg: DataConfig, arg: str | None) -> "DataBundle":
    """x_calibration (unlabelled: int8 calibration only, never trained on), x_test, y_test, class_names."""
    import numpy as np

    from tfcnn.data.bundle import make_bundle
    from tfcnn.errors import DataError

    path = Path(arg or "")
    try:
        with np.load(path, allow_pickle=False) as z:
            x_cal, x_test, y_test = z["x_calibration"], z["x_test"], z["y_test"]
            names = [str(n) for n in z["class_names"].tolist()]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"reference:{path}: not a reference archive written by tfcnn.export_model ({exc})") from None
    # Calibration images carry no labels; they only feed the int8 converter, so a constant label
    # keeps the bundle's shape (train = calibration, no validation split) without inventing classes.
    y_cal = np.zeros(len(x_cal), np.int32)
    return make_bundle(cfg, (x_cal, y_cal), (x_test, y_test.astype(np.int32)), names, f"reference:{path.resolve()}")


# --------------------------------------------------------------------------- detection / segmentation


def _check_scenes(cfg: DataConfig, arg: str | None) -> None:
    kind = cfg.source
    if cfg.path is not None and kind == "shapes":
        raise ConfigError(f"data.path = {cfg.path!r} is not read by the shapes source (it draws its scenes); remove data.path")
    _path_is_a_directory_name(cfg, arg)
    sc = cfg.scenes
    if cfg.max_objects is not None and cfg.max_objects < sc.most_objects():
        raise ConfigError(
            f"data.max_objects = {cfg.max_objects} < {sc.most_objects()}, the most objects a scene holds "
            "(data.scenes.max_objects / train_max_objects); raise data.max_objects or lower those"
        )


def _scene_bundle(cfg: DataConfig, name: str) -> "DataBundle":
    import time

    from tfcnn.data import scenes
    from tfcnn.data.builtin import FASHION_MNIST_CLASSES
    from tfcnn.data.inmemory import from_label_arrays
    from tfcnn.util import log

    sc = cfg.scenes
    labels = sc.labels if sc.labels != "auto" else "boxes"
    m = cfg.max_objects or sc.most_objects()
    start = time.perf_counter()
    if name == "fashion_scenes":
        train_items, test_items = scenes.load_fashion_items(cfg.path)
        train, test = scenes.fashion_scenes(sc, cfg.seed, train_items, test_items, m)
        names = list(FASHION_MNIST_CLASSES)
    else:
        train, test = scenes.shapes_scenes(sc, cfg.seed, m)
        names = list(scenes.SHAPE_CLASSES)
    took = time.perf_counter() - start
    log.info("data: generated %d + %d %s scenes in %.1f s", len(train.images), len(test.images), name, took)
    if labels == "masks" and sc.mask_classes == "foreground":
        names = ["object"]  # mask value 1 = class_names[0]: any object
    pick = (lambda s: s.boxes) if labels == "boxes" else (lambda s: s.mask_labels(sc.mask_classes))
    seed = sc.seed if sc.seed is not None else cfg.seed
    source = f"{name} ({sc.num_train}+{sc.num_test} scenes {sc.size}x{sc.size}, {labels}, seed {seed})"
    return from_label_arrays(
        cfg, (train.images, pick(train)), (test.images, pick(test)), names, label_kind=labels, source=source
    )


@register_source("fashion_scenes", check=_check_scenes, summary="generated scenes of Fashion-MNIST items (boxes or masks)")
def _load_fashion_scenes(cfg: DataConfig, arg: str | None) -> "DataBundle":
    return _scene_bundle(cfg, "fashion_scenes")


@register_source("shapes", check=_check_scenes, summary="generated scenes of circles, squares and triangles (boxes or masks)")
def _load_shapes(cfg: DataConfig, arg: str | None) -> "DataBundle":
    return _scene_bundle(cfg, "shapes")


def _check_coco(cfg: DataConfig, arg: str | None) -> None:
    _path_is_a_directory_name(cfg, arg)
    if Path(arg or "").suffix.lower() != ".json":
        raise ConfigError(
            f"data.source = {cfg.source!r}: a COCO source names its annotations file; use 'coco:<annotations.json>'"
        )


@register_source(
    "coco",
    arg="annotations.json",
    check=_check_coco,
    summary="COCO-format detection JSON (images relative to it or data.path)",
)
def _load_coco(cfg: DataConfig, arg: str | None) -> "DataBundle":
    from tfcnn.data import coco_format
    from tfcnn.data.inmemory import from_label_arrays

    path = Path(arg or "")
    d = coco_format.read_coco(path, cfg.path, cfg.max_objects, cfg.image_size, cfg.channels)
    return from_label_arrays(
        cfg, (d.images, d.labels), None, d.class_names, label_kind="boxes", source=f"coco:{path.resolve()}", notes=d.notes
    )


@register_source(
    "tfds_detection", arg="name", check=_check_tfds, summary="a TensorFlow Datasets detection set (voc/2007, coco/2017)"
)
def _load_tfds_detection(cfg: DataConfig, arg: str | None) -> "DataBundle":
    from tfcnn.data import tfds_detection
    from tfcnn.data.inmemory import from_label_arrays
    from tfcnn.data.tfds_source import to_one_size

    d = tfds_detection.load_tfds_detection(arg or "", data_dir=cfg.path, max_objects=cfg.max_objects)
    size = tuple(cfg.image_size) if cfg.image_size else None
    splits = {}
    for key in ("train", "test"):
        part = d.get(key)
        if part is not None:
            stack, size, _ = to_one_size(part[0], size)  # type: ignore[arg-type]
            part = (stack, part[1])
        splits[key] = part
    return from_label_arrays(cfg, splits["train"], splits["test"], d["class_names"], label_kind="boxes", source=d["source"])


def _check_tfds_segmentation(cfg: DataConfig, arg: str | None) -> None:
    from tfcnn.data.tfds_segmentation import spec_for

    _check_tfds(cfg, arg)
    try:
        spec_for(arg or "")
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    if not cfg.image_size:
        raise ConfigError(
            f"data.source = {cfg.source!r}: the set's images differ in size; set data.image_size = [height, width] "
            "(e.g. [128, 128]; masks resize with nearest)"
        )


@register_source(
    "tfds_segmentation", arg="name", check=_check_tfds_segmentation,
    summary="a TensorFlow Datasets segmentation set (oxford_iiit_pet: pet / border trimap)",
)
def _load_tfds_segmentation(cfg: DataConfig, arg: str | None) -> "DataBundle":
    from tfcnn.data import tfds_segmentation
    from tfcnn.data.inmemory import from_label_arrays

    size = tuple(cfg.image_size) if cfg.image_size else None
    d = tfds_segmentation.load_tfds_segmentation(arg or "", size, data_dir=cfg.path)  # type: ignore[arg-type]
    return from_label_arrays(cfg, d["train"], d["test"], d["class_names"], label_kind="masks", source=d["source"])


@register_source(
    "masks", arg="dir", check=_no_data_path("directory"), summary="images/ + masks/ (class-id or palette PNGs) + classes.txt"
)
def _load_mask_folder(cfg: DataConfig, arg: str | None) -> "DataBundle":
    """Users' own segmentation data (layout in :mod:`tfcnn.data.mask_folder`); no test split in
    the folder, so ``data.test_fraction`` is held out."""
    from tfcnn.data import mask_folder
    from tfcnn.data.inmemory import from_label_arrays

    root = Path(arg or "")
    size = tuple(cfg.image_size) if cfg.image_size else None
    x, y, names, notes = mask_folder.read_mask_folder(root, size)  # type: ignore[arg-type]
    return from_label_arrays(cfg, (x, y), None, names, label_kind="masks", source=f"masks:{root.resolve()}", notes=notes)
