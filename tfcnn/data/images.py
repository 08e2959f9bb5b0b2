"""Decode one image file into the exact uint8 HWC array the model is trained on.

The folder source, `tfcnn predict` and `tfcnn explain` all go through :func:`load_image`, so a
user's photo is preprocessed exactly like the training images. The contract (which the Android
demo must reproduce) is, in order:

1. decode (first frame of an animated GIF), apply the EXIF orientation a phone camera records;
2. transparency: RGBA / LA / palette-with-transparency images are composited over BLACK
   (``rgb * alpha / 255``, rounded), so fully transparent pixels read 0 whatever colour they hide;
3. resize to (height, width) with BILINEAR interpolation (Pillow's ``Image.resize(BILINEAR)``)
   in the image's own channels;
4. channels: grey -> RGB replicates the grey value; RGB -> grey uses ITU-R BT.601 luma
   ``Y = 0.299 R + 0.587 G + 0.114 B`` rounded (Pillow's ``convert("L")`` fixed-point maths).

16-bit grey images are scaled to 8 bits (``v / 257``, rounded).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tfcnn.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
RESIZE_METHOD = "bilinear"  # the one resize every consumer (training, predict, Android) must use
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"}
# BT.601 luma weights in the 16-bit fixed point Pillow uses, so arrays and files agree to the bit.
_LUMA = np.array([19595, 38470, 7471], dtype=np.uint32)


def load_image(path: str | Path, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """uint8 (H, W, channels) array of one image file; `size` is (height, width) or None to keep it.

    Raises DataError naming the file when it is missing, not an image, truncated or corrupt.
    """
    if channels not in (1, 3):
        raise DataError(f"channels = {channels!r} is not supported; use 1 (grey) or 3 (RGB)")
    return conform_image(decode_image(path), size, channels)


def decode_image(path: str | Path) -> np.ndarray:
    """The file's pixels as uint8 (H, W, 1) or (H, W, 3), transparency composited, size untouched."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return _to_array(img)
    except FileNotFoundError:
        raise DataError(f"{path}: no such image file") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable JPEG/PNG/BMP/GIF image") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: refused, too many pixels ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from None


class ImageHeader(NamedTuple):
    size: tuple[int, int]  # (height, width) after EXIF orientation
    colour: bool
    alpha: bool  # has transparency that will be composited over black


def probe_image(path: str | Path) -> ImageHeader:
    """Size, colour and transparency from the file header only, without decoding the pixels.

    Colour is decided by the stored mode: RGB-like modes are colour, L/LA/1/I are grey, and a
    palette image is grey only when every palette entry is grey.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
            if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: exif_transpose swaps the axes
                w, h = h, w
            alpha = img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info
            return ImageHeader((h, w), _is_colour(img), alpha)
    except FileNotFoundError:
        raise DataError(f"{path}: no such image file") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable JPEG/PNG/BMP/GIF image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt image header ({exc})") from None


def conform_image(arr: np.ndarray, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """Resize (bilinear, own channels) then convert channels; the single definition of both steps."""
    if size is not None and tuple(arr.shape[:2]) != tuple(size):
        arr = resize_image(arr, size)
    return to_channels(arr, channels)


def resize_image(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, C) -> (size[0], size[1], C) with Pillow BILINEAR, one channel plane at a time
    when C is 1 so grey stays grey."""
    h, w = int(size[0]), int(size[1])
    if arr.shape[-1] == 1:
        out = Image.fromarray(np.ascontiguousarray(arr[..., 0])).resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(out, dtype=np.uint8)[..., None]
    out = Image.fromarray(np.ascontiguousarray(arr)).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (..., 1|3) -> (..., channels): grey replicated to RGB, RGB to BT.601 luma."""
    have = x.shape[-1]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return np.repeat(x, 3, axis=-1)
    if have == 3 and channels == 1:
        y = (x.astype(np.uint32) * _LUMA).sum(axis=-1, dtype=np.uint32) + 0x8000
        return (y >> 16).astype(np.uint8)[..., None]
    raise DataError(f"cannot convert {have}-channel images to {channels} channels; use channels = 1 or 3")


def _is_colour(img: Image.Image) -> bool:
    if img.mode in _COLOUR_MODES:
        return True
    if img.mode in ("P", "PA"):
        palette = img.getpalette() or []
        triples = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
        return bool((triples != triples[:, :1]).any())
    return False


def _to_array(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img) or img
    colour = _is_colour(img)
    mode = img.mode
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
        rgba = np.asarray(img, dtype=np.uint8)
        rgb = _over_black(rgba[..., :3], rgba[..., 3:])
        return rgb if colour else rgb[..., :1]
    if mode in ("RGBA", "RGBa", "LA", "La"):
        if mode in ("RGBa", "La"):  # premultiplied: Pillow un-premultiplies on convert
            img = img.convert("RGBA" if mode == "RGBa" else "LA")
        arr = np.asarray(img, dtype=np.uint8)
        return _over_black(arr[..., :-1], arr[..., -1:])
    if mode in _COLOUR_MODES:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8)[..., None]
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)[..., None]
    if mode.startswith("I") or mode == "F":  # 16/32-bit grey
        arr = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)[..., None]
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _over_black(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite straight-alpha pixels over black: round(c * a / 255) in integer maths."""
    out = (colour.astype(np.uint32) * alpha.astype(np.uint32) + 127) // 255
    return out.astype(np.uint8)
