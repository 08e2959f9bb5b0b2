"""What the rest of the pipeline needs to know about a data set, saved as data.json in the run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tfcnn.rundir import read_json, write_json


@dataclass
class DataInfo:
    """Describes the splits; mean/std are per channel in 0-255 pixel units, from the training split."""

    class_names: list[str]
    input_shape: tuple[int, int, int]  # (height, width, channels) the model sees
    mean: list[float]
    std: list[float]
    num_train: int
    num_val: int
    num_test: int
    source: str  # human-readable resolved source (path or tfds name)
    skipped: list[dict[str, str]] = field(default_factory=list)  # [{"file": ..., "reason": ...}]
    # Decisions the loader took on the user's behalf (default size/channels, alpha, resizes).
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataInfo":
        d = dict(d)
        d["input_shape"] = tuple(d["input_shape"])
        return cls(**d)

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "DataInfo":
        return cls.from_dict(read_json(path))
