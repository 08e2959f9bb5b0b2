"""What the rest of the pipeline needs to know about a data set: the ``data`` record of a run.

Written and read through the run (``run.write(info)``, ``run.read(DataInfo)``, see
:mod:`tfcnn.run`), which owns the file name; :meth:`DataInfo.save` / :meth:`DataInfo.load`
remain for callers that hold a path rather than a :class:`~tfcnn.run.Run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tfcnn.run import Record
from tfcnn.util import read_json, write_json


@dataclass
class DataInfo(Record):
    """Describes the splits; mean/std are per channel in 0-255 pixel units, from the training split."""

    KIND: ClassVar[str] = "data"
    SCHEMA: ClassVar[str] = "tfcnn.data/1"

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
    # What a label is: "classes" (int32 [N] class ids), "boxes" (float32 [N, M, 5] rows ymin, xmin,
    # ymax, xmax, class id; PAD rows -1) or "masks" (uint8 [N, H, W]; 0 background, class id + 1).
    # Defaults keep data.json files written before detection loading as classification records.
    label_kind: str = "classes"
    max_objects: int | None = None  # boxes: M, the padded label rows per image; None otherwise

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(d) for d in self.input_shape)  # type: ignore[assignment]  # JSON gives a list

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def save(self, path: Path) -> None:
        """Write to an explicit path (a Run writes it with ``run.write(info)``)."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "DataInfo":
        """Read from an explicit path (a Run reads it with ``run.read(DataInfo)``)."""
        return cls.from_dict(read_json(path, what="the data record"), where=Path(path))
