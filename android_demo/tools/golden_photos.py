"""Write the golden photos the classifier's JVM tests resize: real PNGs of other sizes than the model's.

Run once from the repository root (the PNGs are committed test resources; nothing runs this at
test time):

    .venv/bin/python android_demo/tools/golden_photos.py

The pixels come from the two photos scikit-learn ships (``sklearn.datasets.load_sample_image``:
china.jpg, flower.jpg), scaled down with Pillow's LANCZOS once here; from then on the PNG *is*
the photo, so no JPEG decoder (Pillow's, javax.imageio's or Android's) is involved in any check.
Each file exercises one part of the resize: larger and smaller than the model input, both aspect
ratios, a strip that shrinks one way and grows the other, straight alpha (RGBA, grey + alpha,
a palette with a transparent entry) and plain grey. Files are kept to a few KB each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_image

OUT = Path(__file__).resolve().parents[1] / "classifier/src/test/resources/golden/photos"


def _scaled(name: str, box: tuple[int, int, int, int], size: tuple[int, int]) -> Image.Image:
    """A region of one sample photo, scaled to size (w, h)."""
    return Image.fromarray(load_sample_image(name)).crop(box).resize(size, Image.Resampling.LANCZOS)


def _radial_alpha(w: int, h: int) -> np.ndarray:
    """255 in the centre, 0 in the corners, every value in between on the way."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((xx - (w - 1) / 2) / (w / 2), (yy - (h - 1) / 2) / (h / 2))
    return np.clip(np.round(255 * (1.25 - r) / 0.75), 0, 255).astype(np.uint8)


def photos() -> dict[str, Image.Image]:
    china, flower = "china.jpg", "flower.jpg"
    rgba = np.asarray(_scaled(flower, (100, 20, 480, 400), (40, 40)).convert("RGBA")).copy()
    rgba[..., 3] = _radial_alpha(40, 40)
    grey_alpha = np.asarray(_scaled(china, (0, 80, 640, 427), (33, 21)).convert("LA")).copy()
    grey_alpha[..., 1] = _radial_alpha(33, 21)
    palette = _scaled(flower, (160, 0, 440, 420), (24, 36)).quantize(colors=32, dither=Image.Dither.NONE)
    palette.info["transparency"] = 0  # palette entry 0 is fully transparent
    return {
        "china_wide_60x40.png": _scaled(china, (0, 0, 640, 427), (60, 40)),
        "flower_tall_30x52.png": _scaled(flower, (130, 0, 380, 427), (30, 52)),
        "flower_small_11x8.png": _scaled(flower, (0, 0, 640, 427), (11, 8)),
        "china_strip_90x9.png": _scaled(china, (0, 200, 640, 264), (90, 9)),
        "flower_alpha_40x40.png": Image.fromarray(rgba, "RGBA"),
        "china_grey_alpha_33x21.png": Image.fromarray(grey_alpha, "LA"),
        "china_grey_25x37.png": _scaled(china, (200, 0, 480, 427), (25, 37)).convert("L"),
        "flower_palette_24x36.png": palette,
    }


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, img in photos().items():
        path = OUT / name
        img.save(path, optimize=True, **({"transparency": 0} if img.mode == "P" else {}))
        print(f"{path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}: {img.mode} {img.size[0]}x{img.size[1]}, {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
