"""TensorFlow Datasets segmentation sets as a source: ``tfds_segmentation:oxford_iiit_pet``.

Why a table of known sets: a TFDS segmentation set stores its mask as an image feature whose
pixel values are the set's own codes, not tfcnn's (0 background, class id + 1). Oxford-IIIT
Pet's ``segmentation_mask`` is the original trimap: 1 pet, 2 background, 3 "not classified" (the
outline band around the pet; the dataset README's numbering, which torchvision follows too).
Each known set names its mask feature, the class names and the code -> tfcnn mapping; a value
outside the mapping is one DataError naming the image, never a silent class.

As with :mod:`tfcnn.data.tfds_detection` nothing is downloaded implicitly (the pet set is
800 MB): a set that is not prepared in the data directory is one DataError saying how to prepare
it. Images differ in size, so ``data.image_size`` is required; images resize bilinearly, masks
with nearest (class ids are never interpolated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from tfcnn.errors import DataError


@dataclass(frozen=True)
class MaskSpec:
    """How one TFDS set's mask feature becomes tfcnn's class-id masks."""

    feature: str  # the mask image feature
    class_names: tuple[str, ...]  # tfcnn class c is mask value c + 1
    mapping: dict[int, int]  # the set's pixel code -> tfcnn mask value (0 background)


KNOWN: dict[str, MaskSpec] = {
    "oxford_iiit_pet": MaskSpec("segmentation_mask", ("pet", "border"), {1: 1, 2: 0, 3: 2}),
}


def spec_for(name: str) -> MaskSpec:
    """The mask recipe of a known set (any version, ``oxford_iiit_pet:4.0.0``); one DataError otherwise."""
    base = name.split(":")[0].split("/")[0]
    if base not in KNOWN:
        raise DataError(
            f"tfds_segmentation:{name} is not a set this loader knows how to read masks of; known: {', '.join(KNOWN)} "
            "(for other data use masks:<dir>, an images/ + masks/ folder)"
        )
    return KNOWN[base]


def to_class_mask(mask: np.ndarray, spec: MaskSpec, where: str) -> np.ndarray:
    """A set's ``[H, W(, 1)]`` mask as uint8 tfcnn class ids; unmapped codes are one DataError."""
    m = np.asarray(mask)
    m = m[..., 0] if m.ndim == 3 else m
    codes = np.unique(m)
    unknown = [int(c) for c in codes if int(c) not in spec.mapping]
    if unknown:
        raise DataError(
            f"{where}: mask values {unknown[:8]} are not in the {spec.feature} codes {sorted(spec.mapping)}; "
            "the set is not the version this loader reads"
        )
    lut = np.zeros(256, np.uint8)
    for code, value in spec.mapping.items():
        lut[code] = value
    return lut[m.astype(np.uint8)]


def to_arrays(
    examples: Iterable[dict[str, Any]], spec: MaskSpec, size: tuple[int, int], where: str
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, h, w, 3], masks uint8 [N, h, w]) at `size`: bilinear images, nearest masks.
    An image and mask of different sizes are one DataError naming the example."""
    from PIL import Image

    from tfcnn.data.images import resize_image

    xs, ys = [], []
    h, w = size
    for i, ex in enumerate(examples):
        image, raw = np.asarray(ex["image"]), np.asarray(ex[spec.feature])
        name = ex.get("file_name", i)
        name = name.decode() if isinstance(name, bytes) else name
        at = f"{where} example {name}"
        if image.shape[:2] != raw.shape[:2]:
            raise DataError(f"{at}: image {image.shape[0]}x{image.shape[1]} but mask {raw.shape[0]}x{raw.shape[1]}")
        mask = to_class_mask(raw, spec, at)
        if image.shape[:2] != (h, w):
            image = resize_image(image, (h, w))
            mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
        xs.append(image)
        ys.append(mask)
    if not xs:
        raise DataError(f"{where}: no examples")
    return np.stack(xs).astype(np.uint8), np.stack(ys).astype(np.uint8)


def load_tfds_segmentation(name: str, size: tuple[int, int] | None, data_dir: str | None = None) -> dict[str, Any]:
    """{"train": (images, masks), "test": (...) or None, "class_names", "source"} for a known set.

    Raises one DataError when the set is unknown, tensorflow-datasets is missing, or the set is
    not prepared in `data_dir` (default: TFDS's own, ``$TFDS_DATA_DIR`` or ~/tensorflow_datasets).
    """
    spec = spec_for(name)
    if size is None:
        raise DataError(
            f"tfds_segmentation:{name} images differ in size; set data.image_size = [height, width] "
            "(e.g. [128, 128]; masks resize with nearest)"
        )
    import tensorflow_datasets as tfds

    from tfcnn.data.tfds_source import prepared_builder, held_out_split

    builder = prepared_builder("tfds_segmentation", name, data_dir)
    if spec.feature not in builder.info.features:
        raise DataError(f"tfds_segmentation:{name} has no {spec.feature!r} feature; it is not the version this loader reads")
    test_split = held_out_split(builder)
    out: dict[str, Any] = {"class_names": list(spec.class_names), "source": f"tfds_segmentation:{name} ({builder.data_dir})"}
    for key, split in (("train", "train"), ("test", test_split)):
        examples = None if split is None else tfds.as_numpy(builder.as_dataset(split=split))
        out[key] = None if examples is None else to_arrays(examples, spec, size, f"tfds_segmentation:{name} {split}")
    return out


__all__ = ["KNOWN", "MaskSpec", "load_tfds_segmentation", "spec_for", "to_arrays", "to_class_mask"]
