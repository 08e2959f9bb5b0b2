"""Read MNIST-style IDX files (raw or gzip), refusing anything whose header and size disagree.

A half-downloaded ``train-images-idx3-ubyte.gz`` would otherwise turn into a reshape error deep in
numpy; here it is one DataError that names the file.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from tfcnn.errors import DataError

# IDX type byte -> big-endian numpy dtype (the IDX header: two zero bytes, a type byte, the rank)
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# (split, kind) -> the file-name stem used by MNIST and Fashion-MNIST
_STEMS = {
    ("train", "images"): ("train-images", 3),
    ("train", "labels"): ("train-labels", 1),
    ("test", "images"): ("t10k-images", 3),
    ("test", "labels"): ("t10k-labels", 1),
}


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """The array stored in one IDX file (``.gz`` detected by content, not name).

    Validates the magic number (two zero bytes, a known type byte, a rank), the rank when `ndim`
    is given, and that the payload holds exactly prod(dims) items.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        head = raw[:4].hex() or "empty"
        raise DataError(f"{path}: not an IDX file (magic bytes {head}; expected 0000 + type 08..0e + rank)")
    dtype = np.dtype(_DTYPES[raw[2]])
    rank = raw[3]
    if ndim is not None and rank != ndim:
        raise DataError(f"{path}: IDX rank {rank}, expected {ndim} ({'images' if ndim == 3 else 'labels'} file mixed up?)")
    header = 4 + 4 * rank
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes); download the file again")
    dims = struct.unpack(f">{rank}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {what}: header says {'x'.join(map(str, dims))} {dtype.name} = {expected} bytes, "
            f"file holds {got}; download the file again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def find_idx(directory: Path, split: str, kind: str) -> Path | None:
    """The IDX file for (split, kind) in `directory`, raw or .gz, '-idx3-' or '.idx3-' spelling."""
    stem, rank = _STEMS[(split, kind)]
    for sep in ("-", "."):
        for suffix in ("", ".gz"):
            p = directory / f"{stem}{sep}idx{rank}-ubyte{suffix}"
            if p.is_file():
                return p
    return None


def has_idx(directory: Path) -> bool:
    """Whether all four MNIST-layout files are present (content is checked when read)."""
    return directory.is_dir() and all(find_idx(directory, s, k) for s, k in _STEMS)


def load_idx_dir(directory: str | Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x_train, y_train), (x_test, y_test)) from an MNIST-layout directory; x uint8 NHW."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"IDX directory {str(directory)!r} does not exist")
    out = []
    for split in ("train", "test"):
        pair = []
        for kind in ("images", "labels"):
            path = find_idx(directory, split, kind)
            if path is None:
                stem, rank = _STEMS[(split, kind)]
                raise DataError(
                    f"{directory}: missing {stem}-idx{rank}-ubyte[.gz]; an IDX directory needs "
                    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
                )
            arr = read_idx(path, ndim=_STEMS[(split, kind)][1])
            if arr.dtype != np.uint8:
                raise DataError(f"{path}: IDX type is {arr.dtype}, expected unsigned bytes (0x08)")
            pair.append((arr, path))
        (x, xp), (y, yp) = pair
        if len(x) != len(y):
            raise DataError(f"{xp.name} holds {len(x)} images but {yp.name} holds {len(y)} labels; they must match")
        out.append((x, y))
    return out[0], out[1]


def read_class_names(directory: Path) -> list[str] | None:
    """Optional ``class_names.txt`` (one name per line) next to the IDX files."""
    p = Path(directory) / "class_names.txt"
    if not p.is_file():
        return None
    names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    return names or None


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{path}: truncated or corrupt gzip ({exc}); download the file again") from None
    return data
