"""The helpers every stage shares, defined once: atomic writes, hashing, sizes, the logger.

One permission policy for everything tfcnn writes: files 0644, directories 0755 (a model server
or a teammate usually runs as another user, and ``mkstemp``/``mkdtemp`` would leave 0600/0700).
Every file is written to a temp name in its own directory and moved into place with
``os.replace``, so a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from tfcnn.errors import ConfigError, TfcnnError

log = logging.getLogger("tfcnn")

FILE_MODE = 0o644
DIR_MODE = 0o755


def ensure_dir(path: Path) -> Path:
    """mkdir -p with the directory permission policy (umask does not narrow it)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for p in missing:
        os.chmod(p, DIR_MODE)
    return path


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it becomes ``path`` (0644), on failure it is removed.

    For writers that want a file name rather than a handle (Keras ``model.save``, ``np.savez``,
    matplotlib ``savefig``); ``suffix`` keeps an extension those writers insist on.
    """
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> Path:
    """Write bytes atomically with the file permission policy."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    """Write text (UTF-8) atomically with the file permission policy."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, payload: Any) -> Path:
    """Write JSON atomically; numpy scalars/arrays and paths are converted, NaN/inf are refused.

    ``allow_nan=False`` because a NaN in a metrics file is a failure to report, not a number:
    JSON has no NaN, and a reader would either crash or silently compare false against it.
    """
    text = json.dumps(payload, indent=2, sort_keys=True, default=jsonable, allow_nan=False)
    return write_text(path, text + "\n")


def read_json(path: Path, *, what: str = "", fix: str = "re-run the stage that writes it") -> Any:
    """Read JSON with one clear line for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise TfcnnError(f"{path} is missing" + (f" ({what})" if what else "") + f"; {fix}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TfcnnError(f"{path} is not valid JSON ({exc}); delete it and {fix}") from None


def jsonable(obj: Any) -> Any:
    """``json.dumps`` default: numpy scalars and arrays, paths."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def make_readable(path: Path) -> None:
    """Apply the permission policy to a tree built elsewhere (mkdtemp, a converter's output)."""
    path = Path(path)
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in entries:
        if not p.is_symlink():
            p.chmod(DIR_MODE if p.is_dir() else FILE_MODE)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def tree_bytes(path: Path) -> int:
    """Size of a file, or of every file under a directory."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def format_bytes(n: int | float | None) -> str:
    """Human size with binary units: 512 B, 1.5 KB, 2.25 MB ("-" for unknown)."""
    if n is None:
        return "-"
    n = float(n)
    if n < 1024:
        return f"{int(n)} B"
    if n < 2**20:
        return f"{n / 1024:.1f} KB"
    if n < 2**30:
        return f"{n / 2**20:.2f} MB"
    return f"{n / 2**30:.2f} GB"


def is_finite(value: Any) -> bool:
    """True for a real, finite number; NaN, inf, None and non-numbers are not."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, for one-line error reports."""
    return (str(exc).strip().splitlines() or [""])[0][:limit]


class _CurrentStderr(logging.StreamHandler):
    """A StreamHandler that writes to whatever ``sys.stderr`` is at the time of each record.

    ``sys.stderr`` is replaced by pytest's capture, notebooks and ``contextlib.redirect_stderr``;
    holding the object seen at set-up would write into a closed or stale stream.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the ``tfcnn`` logger once: one ``[tfcnn] message`` line per event, on stderr.

    Progress goes to stderr so that a command's result (a JSON document, a table, a path) is all
    that stdout carries: ``tfcnn benchmark DIR > latency.json`` stays valid JSON.

    Called by the CLI (and by scripts that want tfcnn's progress lines); a library user who
    configures logging themselves gets tfcnn's records through their own handlers instead.
    """
    for h in log.handlers:
        if isinstance(h, _CurrentStderr):
            h.setLevel(level)
            log.setLevel(level)
            return
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("[tfcnn] %(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def on_terminal() -> bool:
    """Whether stdout is an interactive terminal (Keras progress bars only then)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def keras_verbose() -> int:
    """Keras ``verbose``: silent unless tfcnn's progress is shown (the CLI, or a script that called
    :func:`setup_logging`); then a progress bar on a terminal, one line per epoch otherwise."""
    if not log.isEnabledFor(logging.INFO):
        return 0
    return 1 if on_terminal() else 2


class Registry(dict):
    """A name -> entry table for one extension point, with one error line for an unknown name.

    ``register`` refuses a duplicate name, so two modules cannot silently replace each other.
    """

    def __init__(self, what: str, config_key: str):
        super().__init__()
        self.what = what
        self.config_key = config_key

    def register(self, name: str, entry: Any) -> Any:
        if name in self:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[Any], Any]:
        def wrap(entry: Any) -> Any:
            return self.register(name, entry)

        return wrap

    def get_or_raise(self, name: str, error: type[Exception] | None = None) -> Any:
        if name not in self:
            raise (error or ConfigError)(self.unknown_message(name))
        return self[name]

    def unknown_message(self, name: str) -> str:
        import difflib

        close = difflib.get_close_matches(str(name), list(self), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{self.config_key} = {name!r} is not a registered {self.what}{hint}; choose one of {', '.join(self)}"


def finite(obj: Any) -> Any:
    """A state mapping with NaN and infinities as None, for a JSON file (which has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
