"""Native converters run in a child process, so a crash is an error line instead of a dead export.

The TFLite converter (full-integer calibration especially) and coremltools are C++ that can abort
or segfault on a bad model ("scale out of expressed type range" on NaN weights killed the whole
process with SIGSEGV, leaving a half-built version behind). :class:`NativeWorker` keeps one
``spawn``-ed child, sends it a function by its importable name plus picklable arguments, and
turns the child's death into :class:`ConverterCrash` naming the signal. The exporter's temp
directory is then removed as for any other failed step.

The exporter uses :func:`shared_worker`: one child per Python process, kept between exports and
started again after a crash, because starting it (a fresh interpreter importing TensorFlow) costs
about 5 s, as much as converting a small model; a script, a tuning loop or a test session that
exports many models pays it once.

A function that cannot be imported by name in the child (a closure or a test double) runs in
this process instead; that is said in a debug log line.
"""

from __future__ import annotations

import atexit
import importlib
import threading
import multiprocessing as mp
import signal
import traceback
from typing import Any, Callable

from tfcnn.errors import ExportError
from tfcnn.util import log


class ConverterCrash(ExportError):
    """The child process running a native converter died (a signal or a hard exit)."""


def _importable(fn: Callable[..., Any]) -> bool:
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or "<" in name:
        return False
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return False
    return obj is fn


def _serve(conn) -> None:
    """Child loop: (module, qualname, args, kwargs) in, ("ok", result) or ("error", type, message) out."""
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        module, name, args, kwargs = job
        try:
            obj: Any = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
            conn.send(("ok", obj(*args, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent as data
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            conn.send(("error", type(exc).__name__, first, isinstance(exc, ExportError), traceback.format_exc()[-2000:]))


class NativeWorker:
    """One child process for native steps, started on the first call; a context manager closes it.

    Calls are serialised (one pipe, one job at a time), so threads may share a worker."""

    def __init__(self) -> None:
        self._proc: Any = None
        self._conn: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> "NativeWorker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # fork after TensorFlow started its threads is unsafe
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), daemon=True, name="tfcnn-native-converter")
        self._proc.start()
        child.close()
        self._conn = parent

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in the child; a crash there raises ConverterCrash naming the signal."""
        if not _importable(fn):
            log.debug("export: %s is not importable by name; running it in this process", fn)
            return fn(*args, **kwargs)
        with self._lock:
            return self._call(fn, args, kwargs)

    def _call(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        try:
            self._conn.send((fn.__module__, fn.__qualname__, args, kwargs))
            reply = self._conn.recv()
        except (KeyboardInterrupt, SystemExit):
            self._kill()  # a reply may still come: the next call must not read it as its own
            raise
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self._proc.join(timeout=10)
            code = self._proc.exitcode
            self._proc = self._conn = None
            if code is not None and code < 0:
                try:
                    name = signal.Signals(-code).name
                except ValueError:
                    name = "unknown signal"
                raise ConverterCrash(f"crashed (signal {-code}, {name}) in the converter's child process") from None
            raise ConverterCrash(f"the converter's child process exited with code {code}") from None
        if reply[0] == "ok":
            return reply[1]
        _, kind, message, is_export_error, _tb = reply
        raise ExportError(message if is_export_error else f"{kind}: {message}")

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=5)
        self._proc = self._conn = None

    def close(self) -> None:
        if self._proc is not None:
            try:
                if self._conn is not None:  # a worker whose pipe already broke has none
                    self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout=5)
        self._proc = self._conn = None


_SHARED: NativeWorker | None = None
_SHARED_LOCK = threading.Lock()


def shared_worker() -> NativeWorker:
    """This process's worker, closed when the interpreter exits (see the module docstring)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = NativeWorker()
            atexit.register(_SHARED.close)
        return _SHARED
