"""Issue 11, data and config: nothing wrong passes, nothing crashes.

* every numeric config key, fed NaN, infinities, negatives, zero, huge values and wrong types,
  either builds a valid config or raises exactly one one-line ConfigError naming the key;
* pipeline files that are not UTF-8, or are directories, give one ConfigError line;
* image files mutated at random (truncations, byte flips, garbled runs) never crash the folder
  source: each is decoded or listed in ``info.skipped`` with a reason; decompression bombs and
  JPEGs with garbled compressed data are skipped with the reason, and the skip is logged.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import typing
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tfcnn.config import PipelineConfig, from_dict, load
from tfcnn.data import load_data
from tfcnn.data.images import decode_image, probe_image
from tfcnn.errors import ConfigError, DataError

# --------------------------------------------------------------------------- config


def _numeric_keys(cls: type = PipelineConfig, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict]]:
    """(path, field metadata) of every int/float setting (Optional and list[int] included), recursively."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _numeric_keys(tp, prefix + (f.name,))
            continue
        args = set(typing.get_args(tp)) | {tp}
        inner = {a for arg in args for a in typing.get_args(arg)} if any(typing.get_origin(a) is list for a in args) else set()
        if args & {int, float} or inner & {int, float}:
            out.append((prefix + (f.name,), dict(f.metadata)))
    return out


# train.finetune.freeze is a fraction (ranged, [0, 1]) or a layer name: a string is a valid value
# there, so the "numbers only" fuzz below does not apply; tests/test_finetune.py checks both forms.
NUMERIC_KEYS = [(p, m) for p, m in _numeric_keys() if ".".join(p) != "train.finetune.freeze"]


def test_every_numeric_key_has_a_range():
    assert len(NUMERIC_KEYS) > 40
    for path, meta in NUMERIC_KEYS:
        key = ".".join(path)
        if key == "data.image_size":  # a list: checked in _cross_checks (1 .. MAX_IMAGE_SIDE per side)
            continue
        assert "choices" in meta or (meta.get("min") is not None and meta.get("max") is not None), key


_NUMBERS = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0, 0.0, -0.0, -1, -1.5, 1, 1.0, 0.5, 0.9, 1.0000001]),
    st.sampled_from([10**6, 10**9, 10**12, 10**18, 10**400, -(10**400), 1e300, -1e300, 2**32, 2**63]),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
)
_WRONG = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["1", "nan", "inf", "1e3", "\n", ""]),
    st.booleans(),
    st.lists(st.integers(-5, 5), max_size=3),
    st.just([math.nan, 1]),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(NUMERIC_KEYS), value=st.one_of(_NUMBERS, _WRONG), as_pair=st.booleans())
def test_numeric_keys_accept_only_sane_values(key, value, as_pair):
    path, meta = key
    name = ".".join(path)
    if name == "data.image_size" and as_pair:
        value = [value, value]
    data: dict = {}
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    try:
        cfg = from_dict(data)
    except ConfigError as exc:
        text = str(exc)
        assert "\n" not in text, text
        assert name in text, (name, text)
        return
    # accepted: the value is finite, of the right kind and inside the field's range
    got = cfg
    for part in path:
        got = getattr(got, part)
    values = got if isinstance(got, list) else [got]
    for v in values:
        if v is None:
            continue
        assert _is_number(v) and math.isfinite(v), (name, value, got)
        if "choices" in meta:
            assert v in meta["choices"]
        if meta.get("min") is not None:
            assert v >= meta["min"] and not (meta.get("lo_open") and v == meta["min"]), (name, v)
        if meta.get("max") is not None:
            assert v <= meta["max"], (name, v)
    assert _is_number(value) or isinstance(value, list) or value is None, (name, value)


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("train", "epochs", 100_001, r"train\.epochs = 100001 is impossible; it must be <= 100000"),
        ("data", "batch_size", 1_000_001, r"data\.batch_size = 1000001 is impossible"),
        ("data", "val_fraction", 1.5, r"data\.val_fraction = 1\.5 is impossible"),
        ("train", "momentum", -0.1, r"train\.momentum = -0\.1 is impossible; it must be >= 0"),
        ("train", "min_lr_fraction", 1.01, r"train\.min_lr_fraction"),
        ("evaluate", "confident_threshold", 2, r"evaluate\.confident_threshold = 2\.0 is impossible"),
        ("train", "learning_rate", 10**400, r"train\.learning_rate = 1000.* is too large to be a number"),
        ("data", "seed", -1, r"data\.seed = -1 is impossible"),
        ("data", "image_size", [100_000, 10], r"data\.image_size = \[100000, 10\] is impossible; each side"),
    ],
)
def test_absurd_values_are_one_line(section, key, value, match):
    with pytest.raises(ConfigError, match=match) as info:
        from_dict({section: {key: value}})
    assert "\n" not in str(info.value)


def test_pipeline_file_not_utf8_or_a_directory(tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('name = "caf\xe9"\n[train]\nepochs = 2\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load(bad)
    text = str(info.value)
    assert "\n" not in text and str(bad) in text and "not UTF-8" in text and "byte offset 11" in text, text

    with pytest.raises(ConfigError, match="is a directory, not a TOML file") as info:
        load(tmp_path)
    assert "does not exist" not in str(info.value)

    nan = tmp_path / "nan.toml"
    nan.write_text("[train]\nlearning_rate = nan\n")
    with pytest.raises(ConfigError, match=r"train\.learning_rate = nan is not a finite number"):
        load(nan)
    huge = tmp_path / "huge.toml"
    huge.write_text("[train]\nepochs = 99999999999999999999\n")
    with pytest.raises(ConfigError, match=r"huge\.toml: train\.epochs = 99999999999999999999 is impossible"):
        load(huge)


# --------------------------------------------------------------------------- images


def _real_images() -> list[Image.Image]:
    sk = pytest.importorskip("sklearn")
    base = Path(sk.__file__).parent / "datasets" / "images"
    out = []
    for name in ("china.jpg", "flower.jpg"):
        with Image.open(base / name) as img:
            out.append(img.convert("RGB"))
    return out


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "GIF":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE)
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif"}


def _variants(img: Image.Image, n: int) -> list[Image.Image]:
    """n distinct 64x64 crops of a real photo."""
    w, h = img.size
    rng = np.random.default_rng(len(img.tobytes()) % 1000)
    out = []
    for _ in range(n):
        side = int(rng.integers(min(w, h) // 3, min(w, h)))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        out.append(img.crop((x, y, x + side, y + side)).resize((64, 64), Image.Resampling.BILINEAR))
    return out


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    kind = int(rng.integers(0, 4))
    b = bytearray(data)
    if kind == 0:  # truncate anywhere
        return bytes(b[: int(rng.integers(0, len(b)))])
    if kind == 1:  # flip a few bytes anywhere
        for i in rng.integers(0, len(b), int(rng.integers(1, 6))):
            b[int(i)] ^= int(rng.integers(1, 256))
        return bytes(b)
    if kind == 2:  # garble a run in the middle half
        start = int(rng.integers(len(b) // 4, 3 * len(b) // 4))
        k = int(rng.integers(1, 48))
        b[start : start + k] = rng.integers(0, 256, len(b[start : start + k]), dtype=np.uint8).tobytes()
        return bytes(b)
    # cut a piece out of the middle
    start = int(rng.integers(0, len(b)))
    return bytes(b[:start] + b[start + int(rng.integers(1, 64)) :])


def _decode_or_refuse(path: Path) -> str:
    """'ok' or 'refused'; any exception other than DataError fails the test."""
    try:
        probe_image(path)
        decode_image(path)
        return "ok"
    except DataError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc), str(exc)
        return "refused"


def test_fuzzed_image_files_never_crash_the_folder_source(tmp_path, caplog):
    rng = np.random.default_rng(11)
    root = tmp_path / "photos"
    good, mutated = set(), []
    for label, img in zip(("china", "flower"), _real_images()):
        cdir = root / label
        cdir.mkdir(parents=True)
        for i, v in enumerate(_variants(img, 8)):
            fmt = list(FORMATS)[i % 4]
            p = cdir / f"good{i}{FORMATS[fmt]}"
            p.write_bytes(_encode(v, fmt))
            good.add(p)
        base = _variants(img, 4)
        for j in range(64):  # 2 classes x 64 = 128 mutated files over all four formats
            fmt = list(FORMATS)[j % 4]
            p = cdir / f"mut{j:02d}{FORMATS[fmt]}"
            p.write_bytes(_mutate(_encode(base[j // 16], fmt), rng))
            mutated.append(p)

    outcome = {p: _decode_or_refuse(p) for p in mutated}
    assert all(_decode_or_refuse(p) == "ok" for p in good)

    with caplog.at_level(logging.WARNING, logger="tfcnn"):
        b = load_data(from_dict({"data": {"source": f"folder:{root}", "val_fraction": 0.0, "test_fraction": 0.25}}).data)
    info = b.info
    skipped = {Path(s["file"]): s["reason"] for s in info.skipped}
    assert all(reason.strip() for reason in skipped.values())
    assert not (set(skipped) & good), "a good image was skipped"
    assert set(skipped) <= set(mutated)
    # each file is either decoded (counted) or listed as skipped, and agrees with decode_image
    assert info.num_train + info.num_val + info.num_test == len(good) + len(mutated) - len(skipped)
    for p, result in outcome.items():
        assert (p in skipped) == (result == "refused"), (p, result, skipped.get(p))
    assert 30 <= len(skipped) < len(mutated)  # most mutations are caught, some leave a valid file
    # the skip is visible: count and the first 5 reasons in the log, the rest in data.json
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{len(skipped)} of {len(good) + len(mutated)} files skipped" in text, text
    assert f"and {len(skipped) - 5} more: see data.json" in text, text


def _bomb_png(side: int) -> bytes:
    """A 1-bit side x side PNG: a few KB on disk, side**2 pixels claimed."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def _good_folder(root: Path, n: int = 4) -> None:
    for label, img in zip(("a", "b"), _real_images()):
        for i, v in enumerate(_variants(img, n)):
            (root / label).mkdir(parents=True, exist_ok=True)
            v.save(root / label / f"{i}.png")


@pytest.mark.parametrize("strict_warnings", [False, True])
def test_decompression_bomb_is_skipped_with_the_reason(tmp_path, strict_warnings, caplog):
    root = tmp_path / "f"
    _good_folder(root)
    data = _bomb_png(15_000)
    assert len(data) < 100_000
    (root / "a" / "huge.png").write_bytes(data)
    (root / "b" / "big.png").write_bytes(_bomb_png(10_000))  # the warning variant: 100 M pixels
    with warnings.catch_warnings():
        if strict_warnings:
            warnings.simplefilter("error")
        with pytest.raises(DataError, match=r"huge\.png: image of 225,000,000 pixels exceeds the decompression-bomb limit"):
            probe_image(root / "a" / "huge.png")
        with pytest.raises(DataError, match=r"image of 100,000,000 pixels exceeds the decompression-bomb limit"):
            decode_image(root / "b" / "big.png")
        with caplog.at_level(logging.WARNING, logger="tfcnn"):
            info = load_data(from_dict({"data": {"source": f"folder:{root}", "val_fraction": 0.0}}).data).info
    skipped = {Path(s["file"]).name: s["reason"] for s in info.skipped}
    assert set(skipped) == {"huge.png", "big.png"}
    assert skipped["huge.png"].startswith("image of 225,000,000 pixels exceeds the decompression-bomb limit")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "2 of 10 files skipped" in text and "huge.png (image of 225,000,000 pixels" in text, text
    assert info.num_train + info.num_val + info.num_test == 8


def _garbled_jpeg(img: Image.Image, seed: int = 3) -> tuple[bytes, bytes]:
    raw = _encode(img, "JPEG")
    sos, eoi = raw.find(b"\xff\xda"), raw.rfind(b"\xff\xd9")
    mid = (sos + eoi) // 2
    rng = np.random.default_rng(seed)
    b = bytearray(raw)
    b[mid : mid + 40] = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    return raw, bytes(b)


def test_garbled_and_truncated_jpegs_are_skipped_not_trained_on(tmp_path):
    root = tmp_path / "f"
    _good_folder(root)
    china = _variants(_real_images()[0], 1)[0]
    raw, garbled = _garbled_jpeg(china)
    # Pillow alone decodes the garbled file without a word: that is what must not pass
    with Image.open(io.BytesIO(garbled)) as img:
        img.load()
    (root / "a" / "garbled.jpg").write_bytes(garbled)
    (root / "a" / "clean.jpg").write_bytes(raw)
    (root / "b" / "truncated.jpg").write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(DataError, match=r"garbled\.jpg: corrupt JPEG data \("):
        decode_image(root / "a" / "garbled.jpg")
    assert decode_image(root / "a" / "clean.jpg").shape == (64, 64, 3)
    info = load_data(from_dict({"data": {"source": f"folder:{root}", "val_fraction": 0.0}}).data).info
    skipped = {Path(s["file"]).name: s["reason"] for s in info.skipped}
    assert set(skipped) == {"garbled.jpg", "truncated.jpg"}
    assert skipped["garbled.jpg"].startswith("corrupt JPEG data")
    assert "truncated" in skipped["truncated.jpg"]
    assert info.num_train + info.num_val + info.num_test == 9


def test_garbled_jpegs_are_mostly_caught():
    """Damage in the compressed data libjpeg would only warn about is caught in most cases."""
    caught = 0
    imgs = [v for img in _real_images() for v in _variants(img, 10)]
    for i, img in enumerate(imgs):
        _, garbled = _garbled_jpeg(img, seed=i)
        try:
            probe = Image.open(io.BytesIO(garbled))
            probe.close()
        except Exception:
            continue
        from tfcnn.data.images import _jpeg_damage

        try:
            with Image.open(io.BytesIO(garbled)) as im:
                im.load()
                pixels = np.asarray(im)
        except Exception:
            caught += 1
            continue
        caught += _jpeg_damage(garbled, pixels) is not None
    assert caught >= 0.7 * len(imgs), (caught, len(imgs))


def test_class_with_only_unreadable_files_names_class_count_and_reasons(tmp_path):
    root = tmp_path / "f"
    _good_folder(root)
    bad = root / "c"
    bad.mkdir()
    for i in range(7):
        (bad / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError) as info:
        load_data(from_dict({"data": {"source": f"folder:{root}"}}).data)
    text = str(info.value)
    assert "class 'c', 7 image files" in text and "every image in this class folder was unreadable" in text
    assert "broken0.png (" in text and "broken4.png (" in text and "and 2 more" in text, text
    assert "see the skipped list" not in text
