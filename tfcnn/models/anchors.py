"""Anchor geometry of a one-stage detector: which boxes the head's outputs are offsets from.

The anchors belong to the model (its head predicts ``per_location`` boxes at every cell of every
pyramid level), so the spec is read from the detector's ``model.options`` and the task
(:mod:`tfcnn.tasks.detection`) generates the same anchors for target assignment, decoding and
the exported graph. Order, which the model's output and :func:`generate_anchors` share:
level (lowest first), then row, then column, then the ``(ratio, scale)`` pairs ratio-major.

Sizes follow RetinaNet: at level ``l`` (stride ``2**l``) the base side is ``size * 2**l`` pixels,
times each octave scale, and a ratio ``r`` = height / width keeps the area:
``h = side * sqrt(r)``, ``w = side / sqrt(r)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AnchorSpec:
    """Pyramid levels and the anchor shapes at each location."""

    levels: tuple[int, ...] = (3, 4, 5)
    size: float = 4.0  # base side in strides (RetinaNet: 4, i.e. 32 px at P3)
    scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width

    @property
    def per_location(self) -> int:
        return len(self.scales) * len(self.ratios)

    def strides(self) -> list[int]:
        return [2**level for level in self.levels]


def grid_sizes(spec: AnchorSpec, height: int, width: int) -> list[tuple[int, int]]:
    """Feature-map size per level: ``ceil(side / stride)``, what 'same'-padded stride-2 layers give."""
    return [(math.ceil(height / s), math.ceil(width / s)) for s in spec.strides()]


def count(spec: AnchorSpec, height: int, width: int) -> int:
    """Anchors over all levels (the detector output's second dimension)."""
    return sum(h * w for h, w in grid_sizes(spec, height, width)) * spec.per_location


def generate_anchors(spec: AnchorSpec, height: int, width: int) -> np.ndarray:
    """``float32 [count, 4]`` anchors ``(ymin, xmin, ymax, xmax)`` normalised by the image size
    (not clipped: an anchor may reach past the border, as its box targets may not)."""
    shapes = []
    for ratio in spec.ratios:
        for scale in spec.scales:
            shapes.append((math.sqrt(ratio) * scale, scale / math.sqrt(ratio)))
    per_level = []
    for stride, (gh, gw) in zip(spec.strides(), grid_sizes(spec, height, width)):
        side = spec.size * stride
        cy = (np.arange(gh, dtype=np.float64) + 0.5) * stride
        cx = (np.arange(gw, dtype=np.float64) + 0.5) * stride
        cy, cx = np.meshgrid(cy, cx, indexing="ij")  # [gh, gw]
        hw = np.asarray(shapes, np.float64) * side  # [a, 2]
        centres = np.stack([cy, cx], -1)[:, :, None, :]  # [gh, gw, 1, 2]
        half = hw[None, None, :, :] / 2.0
        boxes = np.concatenate([centres - half, centres + half], -1)  # [gh, gw, a, 4]
        per_level.append(boxes.reshape(-1, 4))
    out = np.concatenate(per_level, 0) / np.array([height, width, height, width], np.float64)
    return out.astype(np.float32)
