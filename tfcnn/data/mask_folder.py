"""Users' own segmentation data: a folder of images beside a folder of PNG masks.

Layout (``data.source = "masks:<dir>"``)::

    <dir>/classes.txt          object class names, one per line (mask value i + 1 = line i)
    <dir>/images/<stem>.png    any IMAGE_EXTENSIONS file
    <dir>/masks/<stem>.png     one per image: 0 background, i + 1 class i

A mask is a single-channel PNG whose pixel values are the class ids, or a palette PNG whose
palette *indices* are (what annotation tools such as CVAT and LabelMe export: the colours are
only for viewing, so they are ignored). An RGB mask is refused: which colour is which class
cannot be known. Images are decoded by :func:`tfcnn.data.images.decode_image` (so damaged files
are one error line naming them); masks resize with NEAREST, never interpolating class ids.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from tfcnn.data.images import IMAGE_EXTENSIONS, decode_image, resize_image
from tfcnn.errors import DataError


def read_mask(path: Path, num_classes: int) -> np.ndarray:
    """One mask as ``uint8 [H, W]`` class ids (0 background .. num_classes), or one DataError line."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode not in ("P", "L", "I", "I;16"):
                raise DataError(
                    f"{path}: mask is a {mode} image; save masks as single-channel PNGs whose values are class ids "
                    "(0 background, i + 1 = classes.txt line i) or as palette PNGs"
                )
            arr = np.asarray(img)
    except DataError:
        raise
    except Exception as exc:  # PIL's errors for damaged or non-image files
        raise DataError(f"{path}: cannot read the mask ({type(exc).__name__}: {exc})") from None
    top = int(arr.max(initial=0))
    if top > num_classes:
        raise DataError(
            f"{path}: mask value {top} but classes.txt lists {num_classes} classes (values 0..{num_classes}); "
            "add the class to classes.txt or fix the mask"
        )
    return arr.astype(np.uint8)


def read_mask_folder(root: str | Path, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(images uint8 NHWC, masks uint8 [N, H, W], class names, notes) of a mask folder; images of
    different sizes need ``size`` (``data.image_size``) unless they share one."""
    root = Path(root)
    where = f"masks:{root}"
    names_file = root / "classes.txt"
    if not names_file.is_file():
        raise DataError(f"{where}: {names_file} is missing; list the object classes there, one per line (mask value i + 1 = line i)")
    names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"{names_file}: no class names")
    image_dir, mask_dir = root / "images", root / "masks"
    for d in (image_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"{where}: {d} is missing; put the images in images/ and their masks (same file stem, .png) in masks/")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"{where}: no images in {image_dir} ({', '.join(IMAGE_EXTENSIONS)})")
    xs, ys = [], []
    for path in images:
        mask_path = mask_dir / f"{path.stem}.png"
        if not mask_path.is_file():
            raise DataError(f"{path}: no mask {mask_path}; every image needs a PNG mask with the same stem")
        x = decode_image(path)
        y = read_mask(mask_path, len(names))
        if y.shape != x.shape[:2]:
            raise DataError(f"{mask_path}: mask is {y.shape[1]}x{y.shape[0]} but its image is {x.shape[1]}x{x.shape[0]}")
        xs.append(x)
        ys.append(y)
    notes = []
    sizes = Counter(x.shape[:2] for x in xs)
    if size is None and len(sizes) > 1:
        raise DataError(
            f"{where}: images come in {len(sizes)} sizes (most common {sizes.most_common(1)[0][0]}); "
            "set data.image_size = [height, width] to resize them (masks with nearest)"
        )
    if size is not None:
        from PIL import Image

        resized = 0
        for i, (x, y) in enumerate(zip(xs, ys)):
            if x.shape[:2] != tuple(size):
                xs[i] = resize_image(x, tuple(size))
                ys[i] = np.asarray(Image.fromarray(y).resize((size[1], size[0]), Image.NEAREST))
                resized += 1
        if resized:
            notes.append(f"{resized} images resized to {size[0]}x{size[1]} (masks with nearest)")
    channels = {x.shape[-1] for x in xs}
    if len(channels) > 1:
        xs = [np.repeat(x, 3, -1) if x.shape[-1] == 1 else x for x in xs]
        notes.append("grey and colour images mixed: grey ones replicated to RGB")
    return np.stack(xs), np.stack(ys), names, notes
