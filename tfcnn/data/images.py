"""Decode one image file into the exact uint8 HWC array the model is trained on.

The folder source, `tfcnn predict` and `tfcnn explain` all go through :func:`load_image`, so a
user's photo is preprocessed exactly like the training images. The contract (which the Android
demo must reproduce) is, in order:

1. decode (first frame of an animated GIF), apply the EXIF orientation a phone camera records;
2. transparency: RGBA / LA / palette-with-transparency images are composited over BLACK
   (``rgb * alpha / 255``, rounded), so fully transparent pixels read 0 whatever colour they hide;
3. resize to (height, width) with BILINEAR interpolation (Pillow's ``Image.resize(BILINEAR)``:
   a triangle filter whose support widens with the downscale factor, so shrinking averages
   every source pixel instead of aliasing; 22-bit fixed-point weights, horizontal pass then
   vertical, each rounded to uint8) in the image's own channels. ``fit`` says what happens to
   another aspect ratio: ``stretch`` (the default; what the folder source does to training
   images) resizes the whole image, ``center_crop`` resizes the largest centred box of the
   target's aspect ratio (``ImageOps.fit``'s sub-pixel box, no rounding of the crop);
4. channels: grey -> RGB replicates the grey value; RGB -> grey uses ITU-R BT.601 luma
   ``Y = 0.299 R + 0.587 G + 0.114 B`` rounded (Pillow's ``convert("L")`` fixed-point maths).

16-bit grey images are scaled to 8 bits (``v / 257``, rounded).

Damaged files are refused, never half-used: every decoder failure becomes a DataError naming the
file (the folder source skips the file and lists the reason). That covers unreadable and
truncated files (Pillow's ``LOAD_TRUNCATED_IMAGES`` is never turned on), images over Pillow's
decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``: refused at the header, before any pixel
is decoded), and images that decode only with a warning (captured per file, thread-safely; the
harmless ones such as "XMP needs defusedxml" are ignored). A JPEG whose compressed data is damaged
decodes without any error in libjpeg, which fills what it cannot read with made-up pixels, so
single-scan JPEGs are also checked for what libjpeg would only warn about: data left over after
the last block, data running out before it, stray markers, restart markers out of order. Such
files are SKIPPED (not kept and listed). Damage that still forms a valid JPEG stream cannot be
detected (JPEG has no checksum), nor can it in progressive JPEGs beyond libjpeg's own errors.
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tfcnn.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
RESIZE_METHOD = "bilinear"  # the one resize every consumer (training, predict, Android) must use
FITS = ("stretch", "center_crop")  # how an image of another aspect ratio meets (height, width)
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"}
# BT.601 luma weights in the 16-bit fixed point Pillow uses, so arrays and files agree to the bit.
_LUMA = np.array([19595, 38470, 7471], dtype=np.uint32)


def load_image(path: str | Path, size: tuple[int, int] | None, channels: int, fit: str = "stretch") -> np.ndarray:
    """uint8 (H, W, channels) array of one image file; `size` is (height, width) or None to keep it,
    `fit` one of :data:`FITS` (an export's ``contract.json`` input.fit).

    Raises DataError naming the file when it is missing, not an image, truncated or corrupt.
    """
    if channels not in (1, 3):
        raise DataError(f"channels = {channels!r} is not supported; use 1 (grey) or 3 (RGB)")
    return conform_image(decode_image(path), size, channels, fit)


@contextmanager
def _as_data_error(path: Path, damaged: str) -> Iterator[None]:
    """Every way opening, probing or decoding a file can fail, as one DataError naming the file.

    ``damaged`` words the catch-all (any decoder failure on a damaged file: OSError,
    SyntaxError, struct.error, ...).
    """
    try:
        yield
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    except FileNotFoundError:
        raise DataError(f"{path}: no such image file") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable JPEG/PNG/BMP/GIF image") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: {_bomb_reason(exc)}") from None
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: {damaged} ({_describe(exc)})") from None


def decode_image(path: str | Path) -> np.ndarray:
    """The file's pixels as uint8 (H, W, 1) or (H, W, 3), transparency composited, size untouched.

    Raises DataError naming the file for any decoder failure, an image over the decompression-bomb
    limit, a decode that only succeeds with a warning, or a JPEG with damaged compressed data.
    """
    path = Path(path)
    with _file_warnings() as caught:
        with _as_data_error(path, "corrupt or truncated image"):
            with Image.open(path) as img:
                _check_pixels(img)
                img.load()
                damage = None
                if img.format == "JPEG" and not img.info.get("progressive") and not img.info.get("progression"):
                    damage = _jpeg_damage(path.read_bytes(), np.asarray(img))
                arr = _to_array(img)
    if damage:
        raise DataError(f"{path}: corrupt JPEG data ({damage}); libjpeg would make up the missing pixels")
    _raise_on_warnings(path, caught)
    return arr


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
    with _file_warnings() as caught:
        with _as_data_error(path, "corrupt image header"):
            with Image.open(path) as img:
                _check_pixels(img)
                w, h = img.size
                orientation = img.getexif().get(0x0112, 1)
                if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: exif_transpose swaps the axes
                    w, h = h, w
                alpha = img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info
                header = ImageHeader((h, w), _is_colour(img), alpha)
    _raise_on_warnings(path, caught)
    return header


# --------------------------------------------------------------------------- damage checks


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, OSError) else f"{type(exc).__name__}: {text}"


def _bomb_limit() -> int | None:
    return Image.MAX_IMAGE_PIXELS


def _bomb_text(pixels: int) -> str:
    limit = _bomb_limit()
    return (
        f"image of {pixels:,} pixels exceeds the decompression-bomb limit"
        + (f" of {limit:,} pixels" if limit else "")
        + " (PIL.Image.MAX_IMAGE_PIXELS)"
    )


def _bomb_reason(exc: BaseException) -> str:
    m = re.search(r"\((\d+) pixels\)", str(exc))
    return _bomb_text(int(m.group(1))) if m else f"refused as a decompression bomb ({_describe(exc)})"


def _check_pixels(img: Image.Image) -> None:
    """Refuse an image over the decompression-bomb limit from its header, before decoding it."""
    limit = _bomb_limit()
    w, h = img.size
    if limit and w * h > limit:
        raise DataError(_bomb_text(w * h))


# Warnings that say nothing about the pixels (a missing optional dependency, Pillow's notes on
# palette transparency, vendor MakerNote data, deprecations) do not make a file damaged.
_HARMLESS = ("XMP", "defusedxml", "Palette images with Transparency", "palette entry for transparency", "MakerNote")
_HARMLESS_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ImportWarning, ResourceWarning)


def _raise_on_warnings(path: Path, caught: list[tuple[type, str]]) -> None:
    for category, message in caught:
        if issubclass(category, Image.DecompressionBombWarning):
            raise DataError(f"{path}: {_bomb_reason(Exception(message))}")
        if issubclass(category, _HARMLESS_CATEGORIES) or any(h in message for h in _HARMLESS):
            continue
        raise DataError(f"{path}: decoded only with a warning, so its pixels may be partial or wrong ({message})")


_tls = threading.local()
_hook_lock = threading.Lock()
_hook_users = 0
_hook_cm: warnings.catch_warnings | None = None


@contextmanager
def _file_warnings() -> Iterator[list[tuple[type, str]]]:
    """Collect the warnings this thread raises while decoding one file.

    ``warnings.catch_warnings`` is process-wide and not thread-safe, so the first user installs
    one hook (filter "always", so a repeated warning is not swallowed by the once-per-location
    registry) and the last one removes it; the hook files each warning under the thread that
    raised it and passes other threads' warnings on unchanged.
    """
    global _hook_users, _hook_cm
    records: list[tuple[type, str]] = []
    outer = getattr(_tls, "records", None)
    with _hook_lock:
        if _hook_users == 0:
            cm = warnings.catch_warnings()
            cm.__enter__()
            original = warnings.showwarning
            warnings.simplefilter("always")

            def hook(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
                mine = getattr(_tls, "records", None)
                if mine is None:
                    original(message, category, filename, lineno, file, line)
                else:
                    mine.append((category, " ".join(str(message).split())))

            warnings.showwarning = hook
            _hook_cm = cm
        _hook_users += 1
    _tls.records = records
    try:
        yield records
    finally:
        _tls.records = outer
        with _hook_lock:
            _hook_users -= 1
            if _hook_users == 0 and _hook_cm is not None:
                _hook_cm.__exit__(None, None, None)
                _hook_cm = None


_STRAY_MARKER = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
_RESTART = re.compile(rb"\xff+([\xd0-\xd7])")
_JPEG_PADS = (b"\x00" * 64, b"\xaa" * 64)


def _jpeg_damage(data: bytes, pixels: np.ndarray) -> str | None:
    """What libjpeg would only warn about in a single-scan JPEG's compressed data, or None.

    `pixels` is the file as Pillow decoded it. Three probes: (1) the compressed data holds no
    stray marker and its restart markers count 0..7 in order; (2) fed byte by byte near the end,
    the decoder must not finish before the last few bytes (else data is left over); (3) with
    filler bytes inserted before the end-of-image marker the pixels must not change (else the
    decoder ran out of data and made up the rest, which the filler now replaces).
    """
    sos = data.find(b"\xff\xda")
    if sos < 0 or data.count(b"\xff\xda") != 1:
        return None  # several scans: libjpeg buffers the whole file; only its own errors apply
    eoi = data.rfind(b"\xff\xd9")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    if eoi < start:
        return "no end-of-image marker after the compressed data"
    scan = data[start:eoi]
    stray = _STRAY_MARKER.search(scan)
    if stray:
        return f"stray marker 0x{stray.group()[-2:].hex().upper()} {start + stray.start():,} bytes into the file"
    restarts = _RESTART.findall(scan)
    if restarts and data.find(b"\xff\xdd", 0, sos) < 0:
        return "restart markers in a file that declares no restart interval"
    for i, marker in enumerate(restarts):
        if marker[0] != 0xD0 + i % 8:
            return f"restart marker {i} out of order"
    try:
        left = _jpeg_bytes_left_over(data)
    except Exception:  # Pillow's incremental decoder API changed: skip this probe
        left = None
    if left is not None and left > 0:
        return f"{'at least ' if left >= 16 else ''}{left} bytes of compressed data left over after the last block"
    for pad in _JPEG_PADS:
        try:
            with Image.open(io.BytesIO(data[:eoi] + pad + data[eoi:])) as img:
                img.load()
                same = np.array_equal(np.asarray(img), pixels)
        except Exception:
            same = False
        if not same:
            return "the compressed data runs out before the last block"
    return None


def _jpeg_bytes_left_over(data: bytes) -> int | None:
    """Bytes before the end-of-image marker that the decoder did not need; None if undecided."""
    with Image.open(io.BytesIO(data)) as img:
        img.load_prepare()
        codec, extents, offset, args = img.tile[0]
        decoder = Image._getdecoder(img.mode, codec, args, img.decoderconfig)
        decoder.setimage(img.im, extents)
        buf = data[offset:]
        eoi = buf.rfind(b"\xff\xd9")
        head = max(0, eoi - 16)
        pending = buf[:head]
        consumed, err = decoder.decode(pending)
        if consumed < 0:
            return eoi - head if err >= 0 else None
        pending = pending[consumed:]
        for i in range(head, len(buf)):
            pending += buf[i : i + 1]
            consumed, err = decoder.decode(pending)
            if consumed < 0:
                return eoi - (i + 1) if err >= 0 else None
            pending = pending[consumed:]
        return None


def conform_image(arr: np.ndarray, size: tuple[int, int] | None, channels: int, fit: str = "stretch") -> np.ndarray:
    """Resize (bilinear, own channels) then convert channels; the single definition of both steps."""
    if size is not None and tuple(arr.shape[:2]) != tuple(size):
        arr = resize_image(arr, size, fit)
    return to_channels(arr, channels)


def resize_image(arr: np.ndarray, size: tuple[int, int], fit: str = "stretch") -> np.ndarray:
    """uint8 (H, W, C) -> (size[0], size[1], C) with Pillow BILINEAR, one channel plane at a time
    when C is 1 so grey stays grey; ``center_crop`` resizes the centred box of the target's
    aspect ratio (``ImageOps.fit``'s box). The Android core reproduces this to the bit."""
    if fit not in FITS:
        raise DataError(f"fit = {fit!r} is not a resize fit; use one of {', '.join(FITS)}")
    h, w = int(size[0]), int(size[1])
    img = Image.fromarray(np.ascontiguousarray(arr[..., 0] if arr.shape[-1] == 1 else arr))
    out = _bilinear(img, (w, h), crop_box(img.width, img.height, w, h, fit))
    out_arr = np.asarray(out, dtype=np.uint8)
    return out_arr[..., None] if arr.shape[-1] == 1 else out_arr


def crop_box(width: int, height: int, out_w: int, out_h: int, fit: str) -> tuple[float, float, float, float]:
    """The source box (left, top, right, bottom) that becomes the output: the whole image to
    stretch, or Pillow's ``ImageOps.fit`` box (centred, sub-pixel, same float maths) to crop."""
    if fit == "stretch":
        return (0.0, 0.0, float(width), float(height))
    src_ratio, out_ratio = width / height, out_w / out_h
    if src_ratio == out_ratio:
        crop_w, crop_h = float(width), float(height)
    elif src_ratio >= out_ratio:
        crop_w, crop_h = out_ratio * height, float(height)
    else:
        crop_w, crop_h = float(width), width / out_ratio
    left, top = (width - crop_w) * 0.5, (height - crop_h) * 0.5
    return (left, top, left + crop_w, top + crop_h)


def _bilinear(img: Image.Image, size: tuple[int, int], box: tuple[float, float, float, float]) -> Image.Image:
    """Pillow BILINEAR of ``box`` to ``size`` (w, h), horizontal pass first, then vertical.

    Each pass is its own one-axis ``Image.resize``, because Pillow chooses the order of its two
    passes itself and has changed the rule (13.0 runs the vertical pass first when the height
    shrinks more than twice as much as the width; earlier versions did so only for images over
    100x taller than wide), and the order moves some pixels by one step. Pinned, the folder
    source, ``tfcnn predict`` and the Android core agree to the bit whatever Pillow is installed.
    """
    x0, y0, x1, y1 = box
    img = img.resize((size[0], img.height), Image.Resampling.BILINEAR, box=(x0, 0, x1, img.height))
    return img.resize(size, Image.Resampling.BILINEAR, box=(0, y0, size[0], y1))


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
