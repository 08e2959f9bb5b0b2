"""Reading a legacy (non-zip) PyTorch state dict without torch: the weights side of
``tfcnn weights``.

Why not ``torch.load``: torch is a 750 MB install to read 18.8 MB of float arrays, and its
unpickler runs whatever the file names. This reader accepts only the few classes a state dict
needs (an OrderedDict of tensors rebuilt from typed storages), so nothing in the file can run;
a test checks it is bit-identical to ``torch.load`` where torch is installed.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tfcnn.errors import TfcnnError
from tfcnn.util import first_line


class _Storage:
    """One typed storage of the file, filled once its bytes are read."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel = dtype, numel
        self.data: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def array(self) -> np.ndarray:
        base = self.storage.data
        assert base is not None
        if not self.shape:
            return base[self.offset].copy()
        item = base.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset:], shape=self.shape, strides=tuple(s * item for s in self.stride)
        )
        return np.array(view)


_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C


def _rebuild_tensor(storage: _Storage, offset: int, shape: tuple, stride: tuple, *_: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Knows an OrderedDict, a tensor and the storage types, and nothing else (no code runs)."""

    def __init__(self, fh: BinaryIO):
        super().__init__(fh)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a state dict")

    def persistent_load(self, pid: Any) -> _Storage:
        kind, dtype, key, _location, numel = pid[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        return self.storages.setdefault(str(key), _Storage(dtype, int(numel)))


def read_torch_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A PyTorch state dict in the legacy (non-zip) format, as name -> numpy array, without torch.

    Layout: pickles of the magic number, the protocol version and the system info, the state
    dict itself (tensors refer to storages by key), the list of storage keys in file order, then
    each storage as an 8-byte little-endian element count followed by its raw elements.
    """
    path = Path(path)
    what = f"{path} is not a legacy PyTorch state dict"
    try:
        with open(path, "rb") as fh:
            if pickle.load(fh) != _TORCH_MAGIC:
                raise TfcnnError(f"{what} (wrong magic number)")
            pickle.load(fh)  # protocol version
            info = pickle.load(fh)
            if isinstance(info, dict) and not info.get("little_endian", True):
                raise TfcnnError(f"{what} (big-endian files are not supported)")
            unpickler = _StateDictUnpickler(fh)
            state = unpickler.load()
            for key in pickle.load(fh):
                storage = unpickler.storages[str(key)]
                (numel,) = struct.unpack("<q", fh.read(8))
                raw = fh.read(numel * storage.dtype.itemsize)
                if numel != storage.numel or len(raw) != numel * storage.dtype.itemsize:
                    raise TfcnnError(f"{what} (storage {key} is truncated)")
                storage.data = np.frombuffer(raw, dtype=storage.dtype)
    except (pickle.UnpicklingError, EOFError, KeyError, struct.error, ValueError) as exc:
        raise TfcnnError(f"{what} ({type(exc).__name__}: {first_line(exc, 120)})") from None
    return {name: ref.array() for name, ref in state.items()}
