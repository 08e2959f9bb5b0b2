"""A NumPy ``.npz`` archive as a source: ``numpy:<file.npz>``.

Keys: ``x_train``, ``y_train`` and optionally ``x_test``, ``y_test`` (without them a stratified
``data.test_fraction`` is held out) and ``class_names``. Images NHW or NHWC uint8.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from tfcnn.errors import DataError


def read_npz(path: str | Path) -> dict[str, Any]:
    """{"train": (x, y), "test": (x, y) or None, "class_names": list or None} without pickles."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"numpy:{path}: no such file; give an .npz with x_train, y_train, x_test, y_test")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            missing = [k for k in ("x_train", "y_train") if k not in keys]
            if missing:
                raise DataError(
                    f"numpy:{path}: missing key {missing[0]!r} (has {sorted(keys)}); "
                    "expected x_train, y_train, x_test, y_test and optionally class_names"
                )
            if ("x_test" in keys) != ("y_test" in keys):
                raise DataError(f"numpy:{path}: has only one of x_test / y_test; give both or neither")
            out: dict[str, Any] = {"train": (z["x_train"], z["y_train"]), "test": None, "class_names": None}
            if "x_test" in keys:
                out["test"] = (z["x_test"], z["y_test"])
            if "class_names" in keys:
                names = z["class_names"]
                if names.dtype.kind not in "US" or names.ndim != 1:
                    raise DataError(f"numpy:{path}: class_names must be a 1-D array of strings, got {names.dtype} {names.shape}")
                out["class_names"] = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
            return out
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"numpy:{path}: not a readable .npz archive ({exc})") from None
    except ValueError as exc:  # object arrays need pickles, which are refused on purpose
        raise DataError(f"numpy:{path}: {exc}; save plain arrays (no object dtype)") from None
