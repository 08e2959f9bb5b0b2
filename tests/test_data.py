"""The data stage: every source, validation errors, splits, statistics, augmentation."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FASHION_DIR, fashion_available
from fakedata import synthetic_arrays
from tfcnn.config import DataConfig, from_dict
from tfcnn.data import (
    FASHION_MNIST_CLASSES,
    DataInfo,
    builtin,
    bundle_for,
    folder,
    from_arrays,
    idx,
    load_data,
    load_image,
    tfds_source,
)
from tfcnn.data.images import to_channels
from tfcnn.errors import DataError, TfcnnError
from tfcnn.run import Run


def data_cfg(**kw) -> DataConfig:
    """A validated DataConfig (through the same checks as a TOML file)."""
    return from_dict({"data": kw}).data


def ids_images(n: int, classes: int = 3, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Images whose first two pixels encode their index, so splits can be checked for overlap."""
    x = np.zeros((n, size, size, 1), np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256
    x[:, 0, 1, 0] = np.arange(n) // 256
    y = (np.arange(n) % classes).astype(np.int32)
    return x, y


def image_ids(x: np.ndarray) -> set[int]:
    return set((x[:, 0, 0, 0].astype(int) + 256 * x[:, 0, 1, 0].astype(int)).tolist())


# --------------------------------------------------------------------------- splits and statistics


def test_stratified_split_sizes_and_class_balance():
    x, y = ids_images(600, classes=3)
    xt, yt = ids_images(90, classes=3)
    b = from_arrays(data_cfg(val_fraction=0.2, batch_size=50), (x, y), (xt, yt), ["a", "b", "c"])
    assert (b.info.num_train, b.info.num_val, b.info.num_test) == (480, 120, 90)
    for split in ("train", "val"):
        counts = np.bincount(b.arrays[split][1], minlength=3)
        assert (counts == counts[0]).all(), (split, counts)  # 200 per class -> 160 / 40 each
    train_ids, val_ids = image_ids(b.arrays["train"][0]), image_ids(b.arrays["val"][0])
    assert not train_ids & val_ids and len(train_ids | val_ids) == 600
    assert b.info.input_shape == (8, 8, 1) and b.info.class_names == ["a", "b", "c"]
    xb, yb = next(iter(b.train))
    assert xb.dtype.name == "uint8" and yb.dtype.name == "int32" and tuple(xb.shape) == (50, 8, 8, 1)


def test_subsets_are_stratified_caps():
    x, y = ids_images(900, classes=3)
    b = from_arrays(data_cfg(train_subset=300, test_subset=60, val_fraction=0.1), (x, y), ids_images(300, 3))
    assert b.info.num_train + b.info.num_val == 300 and b.info.num_test == 60
    assert (np.bincount(b.arrays["test"][1]) == 20).all()
    assert (np.bincount(np.concatenate([b.arrays["train"][1], b.arrays["val"][1]])) == 100).all()


def test_same_seed_same_split_and_order_other_seed_differs():
    x, y = ids_images(400, classes=4)
    test = ids_images(40, classes=4)

    def order(bundle, epochs=2):
        return [np.concatenate([xb.numpy()[:, 0, 0, 0] for xb, _ in bundle.train]) for _ in range(epochs)]

    a = from_arrays(data_cfg(seed=7, batch_size=32), (x, y), test)
    b = from_arrays(data_cfg(seed=7, batch_size=32), (x, y), test)
    c = from_arrays(data_cfg(seed=8, batch_size=32), (x, y), test)
    assert np.array_equal(a.arrays["val"][0], b.arrays["val"][0])
    oa, ob = order(a), order(b)
    assert all(np.array_equal(p, q) for p, q in zip(oa, ob))
    assert not np.array_equal(oa[0], oa[1])  # reshuffled every epoch
    assert image_ids(a.arrays["val"][0]) != image_ids(c.arrays["val"][0])


def test_mean_std_come_from_training_split_only():
    x, y = synthetic_arrays(200, size=8, channels=3, seed=3)
    xt = np.full((30, 8, 8, 3), 255, np.uint8)  # would drag the mean up if it leaked in
    b = from_arrays(data_cfg(val_fraction=0.25), (x, y), (xt, np.arange(30) % 3))
    train = b.arrays["train"][0].astype(np.float64)
    np.testing.assert_allclose(b.info.mean, train.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(b.info.std, train.std(axis=(0, 1, 2)), rtol=1e-6)
    assert max(b.info.mean) < 120


# --------------------------------------------------------------------------- IDX


def write_idx(path: Path, arr: np.ndarray, *, gz: bool) -> Path:
    payload = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_idx_dir(d: Path, *, gz: bool, n_train: int = 60, n_test: int = 30) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    # 10 classes (Fashion-MNIST's names), each with training images: a named class without any is refused
    xtr, ytr = synthetic_arrays(n_train, size=12, classes=10, seed=4)
    xte, yte = synthetic_arrays(n_test, size=12, classes=10, seed=5)
    write_idx(d / f"train-images-idx3-ubyte{sfx}", xtr[..., 0], gz=gz)
    write_idx(d / f"train-labels-idx1-ubyte{sfx}", ytr.astype(np.uint8), gz=gz)
    write_idx(d / f"t10k-images-idx3-ubyte{sfx}", xte[..., 0], gz=gz)
    write_idx(d / f"t10k-labels-idx1-ubyte{sfx}", yte.astype(np.uint8), gz=gz)
    return d


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    d = write_idx_dir(tmp_path / "idx", gz=gz)
    (xtr, ytr), (xte, yte) = idx.load_idx_dir(d)
    exp_x, exp_y = synthetic_arrays(60, size=12, classes=10, seed=4)
    assert np.array_equal(xtr, exp_x[..., 0]) and np.array_equal(ytr, exp_y)
    assert xte.shape == (30, 12, 12) and xtr.dtype == np.uint8
    b = load_data(data_cfg(source=f"idx:{d}", val_fraction=0.0))
    assert b.info.input_shape == (12, 12, 1) and b.info.num_train == 60 and b.info.num_test == 30


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_or_wrong_idx_is_one_clear_error(tmp_path, gz):
    d = write_idx_dir(tmp_path / "idx", gz=gz)
    sfx = ".gz" if gz else ""
    victim = d / f"train-images-idx3-ubyte{sfx}"
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*(truncated|corrupt)"):
        load_data(data_cfg(source=f"idx:{d}"))
    write_idx_dir(d, gz=gz)
    labels = d / f"t10k-labels-idx1-ubyte{sfx}"
    write_idx(labels, np.zeros((30, 2), np.uint8), gz=gz)  # rank 2 where labels need rank 1
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*rank 2"):
        load_data(data_cfg(source=f"idx:{d}"))
    labels.write_bytes(b"PK\x03\x04 not idx at all")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*not an IDX file"):
        idx.load_idx_dir(d)
    write_idx(labels, np.zeros(29, np.uint8), gz=gz)
    with pytest.raises(DataError, match="30 images but .* 29 labels"):
        idx.load_idx_dir(d)


# --------------------------------------------------------------------------- named data sets: resolution order


@pytest.fixture()
def no_local_fashion(monkeypatch, tmp_path):
    """Hide the Debian copy and $TFCNN_DATA_DIR; TFDS answers like an offline machine."""
    monkeypatch.delenv(builtin.ENV_VAR, raising=False)
    monkeypatch.setitem(builtin.DEBIAN_DIRS, "fashion_mnist", tmp_path / "no-debian")
    calls = []

    def offline(name, data_dir=None):
        calls.append(name)
        raise DataError(f"tfds:{name} is not downloaded and this machine is offline")

    monkeypatch.setattr(tfds_source, "load_tfds", offline)
    return calls


def test_resolution_order_path_env_debian_then_tfds(tmp_path, monkeypatch, no_local_fashion):
    env_dir = write_idx_dir(tmp_path / "env", gz=True, n_train=30)
    deb_dir = write_idx_dir(tmp_path / "deb", gz=False, n_train=45)
    explicit = write_idx_dir(tmp_path / "explicit", gz=True, n_train=60)
    monkeypatch.setitem(builtin.DEBIAN_DIRS, "fashion_mnist", deb_dir)
    assert builtin.resolve_idx_dir("fashion_mnist", None)[0] == deb_dir
    monkeypatch.setenv(builtin.ENV_VAR, str(env_dir))
    assert builtin.resolve_idx_dir("fashion_mnist", None)[0] == env_dir
    assert builtin.resolve_idx_dir("fashion_mnist", str(explicit))[0] == explicit
    monkeypatch.setenv(builtin.ENV_VAR, str(tmp_path))  # the data set in a fashion-mnist/ sub-folder
    write_idx_dir(tmp_path / "fashion-mnist", gz=True)
    assert builtin.resolve_idx_dir("fashion_mnist", None)[0] == tmp_path / "fashion-mnist"

    b = load_data(data_cfg(source="fashion_mnist", path=str(explicit), val_fraction=0.0))
    assert b.info.num_train == 60 and b.info.class_names == FASHION_MNIST_CLASSES
    assert str(explicit) in b.info.source and not no_local_fashion  # TFDS never asked
    with pytest.raises(DataError, match="data.path .* does not hold"):
        load_data(data_cfg(source="fashion_mnist", path=str(tmp_path / "empty")))


def test_nothing_found_names_the_three_ways(no_local_fashion):
    with pytest.raises(DataError) as err:
        load_data(data_cfg(source="fashion_mnist"))
    msg = str(err.value)
    assert no_local_fashion == ["fashion_mnist"]
    assert "apt-get install dataset-fashion-mnist" in msg and "TFCNN_DATA_DIR" in msg and "data.path" in msg
    assert "online" in msg and "\n" not in msg


def test_tfds_fallback_when_no_local_copy(monkeypatch, no_local_fashion):
    x, y = synthetic_arrays(40, size=28, classes=10, seed=6)
    fake = {"train": (x[..., 0], y), "test": (x[:20, ..., 0], y[:20]), "class_names": list("abcdefghij"), "source": "tfds:x"}
    monkeypatch.setattr(tfds_source, "load_tfds", lambda name, data_dir=None: fake)
    b = load_data(data_cfg(source="fashion_mnist", val_fraction=0.0))
    assert b.info.class_names == FASHION_MNIST_CLASSES and b.info.num_train == 40


@pytest.mark.skipif(not fashion_available(), reason="Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_subset():
    (xtr, ytr), (xte, yte) = idx.load_idx_dir(FASHION_DIR)
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    assert np.array_equal(np.bincount(ytr), np.full(10, 6000)) and np.array_equal(np.bincount(yte), np.full(10, 1000))
    b = load_data(data_cfg(source="fashion_mnist", path=str(FASHION_DIR), train_subset=1000, test_subset=200))
    assert b.info.num_classes == 10 and b.info.class_names[0] == "T-shirt/top" and b.info.class_names[9] == "Ankle boot"
    assert (b.info.num_train + b.info.num_val, b.info.num_test) == (1000, 200)
    assert b.info.input_shape == (28, 28, 1) and (np.bincount(b.arrays["test"][1]) == 20).all()


# --------------------------------------------------------------------------- TFDS (offline, mocked)


def test_tfds_source_with_mock_data(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tfds_source, "online", lambda: True)  # mock_data replaces the download itself
    with tfds.testing.mock_data(num_examples=24):  # random labels: class 8 gets no training image
        with pytest.raises(DataError, match=r"1 of 10 classes have no training images: '8' \(id 8\)"):
            load_data(data_cfg(source="tfds:cifar10", val_fraction=0.25))
    with tfds.testing.mock_data(num_examples=80):
        b = load_data(data_cfg(source="tfds:cifar10", val_fraction=0.25))
        assert b.info.input_shape == (32, 32, 3) and b.info.num_classes == 10
        assert (b.info.num_train, b.info.num_val, b.info.num_test) == (60, 20, 80)
        flowers = load_data(data_cfg(source="tfds:tf_flowers", image_size=[20, 24], channels=1, val_fraction=0.0))
    assert flowers.info.class_names == ["dandelion", "daisy", "tulips", "sunflowers", "roses"]
    assert flowers.info.input_shape == (20, 24, 1)


def test_tfds_offline_and_not_downloaded_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setattr(tfds_source, "online", lambda: False)
    with pytest.raises(DataError, match="offline"):
        load_data(data_cfg(source="tfds:mnist", path=str(tmp_path)))


# --------------------------------------------------------------------------- image folders


def save(img: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)
    return path


def rgb_image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture()
def mixed_folder(tmp_path) -> Path:
    """Three classes of mixed formats, modes and sizes, plus junk that must be skipped."""
    root = tmp_path / "pets"
    rng = np.random.default_rng(0)
    for i in range(6):
        save(rgb_image(24, 32, i), root / "cat" / f"c{i}.png")  # most common size: 24x32
        grey = Image.fromarray(rng.integers(0, 256, (24, 32), dtype=np.uint8))
        save(grey, root / "dog" / f"d{i}.jpg", quality=95)
        save(rgb_image(40, 40, 10 + i).convert("P", palette=Image.Palette.ADAPTIVE), root / "fox" / f"f{i}.gif")
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., 0] = 255  # pure red everywhere ...
    rgba[:, 16:, 3] = 255  # ... but only the right half is opaque
    save(Image.fromarray(rgba), root / "cat" / "alpha.png")
    save(rgb_image(16, 16, 99), root / "dog" / "small.bmp")
    save(Image.fromarray(rng.integers(0, 256, (10, 12), dtype=np.uint8)).convert("LA"), root / "fox" / "la.png")
    jpeg = io.BytesIO()
    rgb_image(24, 32, 50).save(jpeg, "JPEG")
    raw = jpeg.getvalue()
    (root / "cat" / "corrupt.jpg").write_bytes(raw[:200] + bytes(rng.integers(0, 256, len(raw) - 200, dtype=np.uint8)))
    png = io.BytesIO()
    rgb_image(24, 32, 51).save(png, "PNG")
    (root / "dog" / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (root / "fox" / "notes.txt").write_text("not an image")
    (root / "fox" / ".DS_Store").write_bytes(b"\0")
    return root


def test_folder_mixed_sizes_and_modes(mixed_folder):
    b = load_data(data_cfg(source=f"folder:{mixed_folder}", test_fraction=0.3, val_fraction=0.0))
    info = b.info
    assert info.class_names == ["cat", "dog", "fox"]
    assert info.input_shape == (24, 32, 3)  # most common size; RGB because some images are colour
    assert info.num_train + info.num_test == 6 * 3 + 3  # 21 readable images
    assert any("most common size" in n for n in info.notes)
    assert "2 images with transparency composited over black" in info.notes  # alpha.png, la.png
    skipped = {Path(s["file"]).name: s["reason"] for s in info.skipped}
    assert set(skipped) == {"corrupt.jpg", "truncated.png", "notes.txt"}
    assert "truncated" in skipped["truncated.png"] and "extension" in skipped["notes.txt"]
    x = np.concatenate([b.arrays["train"][0], b.arrays["test"][0]])
    assert x.dtype == np.uint8 and x.shape[1:] == (24, 32, 3)

    # predict/explain decode user images exactly like the folder source did
    alpha = load_image(mixed_folder / "cat" / "alpha.png", (24, 32), 3)
    assert (alpha[:, :16] == 0).all() and (alpha[:, 16:] == [255, 0, 0]).all()
    for path in (mixed_folder / "dog" / "d0.jpg", mixed_folder / "fox" / "f0.gif", mixed_folder / "dog" / "small.bmp"):
        img = load_image(path, (24, 32), 3)
        assert any(np.array_equal(img, row) for row in x), path
    grey = load_image(mixed_folder / "dog" / "d1.jpg", None, 3)
    assert (grey[..., 0] == grey[..., 2]).all()  # grey replicated, not tinted
    with pytest.raises(DataError, match="truncated.png"):
        load_image(mixed_folder / "dog" / "truncated.png", (24, 32), 3)


def test_folder_explicit_size_channels_and_train_test_layout(tmp_path):
    root = tmp_path / "split"
    for split, n in (("train", 8), ("test", 3)):
        for c, cls in enumerate(("ant", "bee")):
            for i in range(n):
                save(rgb_image(30 + i, 20, 100 * c + i + n), root / split / cls / f"{i}.png")
    b = load_data(data_cfg(source=f"folder:{root}", image_size=[16, 12], channels=1, val_fraction=0.25))
    assert b.info.input_shape == (16, 12, 1)
    assert (b.info.num_train, b.info.num_val, b.info.num_test) == (12, 4, 6)
    expected = load_image(root / "test" / "ant" / "0.png", (16, 12), 1)
    assert any(np.array_equal(expected, row) for row in b.arrays["test"][0])


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees
    path = save(rgb_image(10, 20, 3), tmp_path / "phone.jpg", exif=exif.tobytes())
    assert load_image(path, None, 3).shape == (20, 10, 3)
    assert load_image(path, (8, 8), 1).shape == (8, 8, 1)


def test_luma_matches_pillow_and_grey_to_rgb_replicates():
    rgb = np.random.default_rng(1).integers(0, 256, (17, 13, 3), dtype=np.uint8)
    ours = to_channels(rgb, 1)[..., 0]
    assert np.array_equal(ours, np.asarray(Image.fromarray(rgb).convert("L")))
    assert np.array_equal(to_channels(ours[..., None], 3), np.repeat(ours[..., None], 3, axis=-1))


def test_folder_errors_empty_class_single_class_missing(tmp_path):
    root = tmp_path / "f"
    save(rgb_image(8, 8, 0), root / "a" / "0.png")
    save(rgb_image(8, 8, 1), root / "a" / "1.png")
    with pytest.raises(DataError, match="at least 2 classes; found only 'a'"):
        load_data(data_cfg(source=f"folder:{root}"))
    (root / "b").mkdir()
    with pytest.raises(DataError, match=r"folder:.*/b holds no JPEG/PNG/BMP/GIF images"):
        load_data(data_cfg(source=f"folder:{root}"))
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match="every image in this class folder was unreadable"):
        load_data(data_cfg(source=f"folder:{root}"))
    with pytest.raises(DataError, match="no such directory"):
        load_data(data_cfg(source=f"folder:{tmp_path / 'missing'}"))


def test_bundle_for_decodes_a_run_once(tmp_path, monkeypatch):
    """Training, int8 calibration, verification and the report share one decode per Run."""
    root = tmp_path / "imgs"
    for c, cls in enumerate(("ant", "bee")):
        for i in range(5):
            save(rgb_image(12, 12, 10 * c + i), root / cls / f"{i}.png")
    decoded = []
    real = folder.decode_image

    def counting(path):
        decoded.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(folder, "decode_image", counting)
    run = Run.create(tmp_path / "run")
    run.save_config(from_dict({"data": {"source": f"folder:{root}", "val_fraction": 0.0, "test_fraction": 0.2}}))
    first = bundle_for(run)
    assert len(decoded) == 10 and first.info.num_train + first.info.num_test == 10
    assert bundle_for(run) is first and len(decoded) == 10  # the second call decodes nothing
    assert bundle_for(Run(run.root)) is not first and len(decoded) == 20  # the memo is per Run (per process)


def test_data_info_is_a_run_record(tmp_path):
    info = DataInfo(["a", "b"], (8, 6, 3), [1.0, 2.0, 3.0], [4.0, 5.0, 6.0], 10, 2, 4, "numpy:/x.npz", notes=["n"])
    run = Run.create(tmp_path / "run")
    path = run.write(info)
    assert path == run.path("data") and json_of(path)["schema"] == "tfcnn.data/1"
    back = run.read(DataInfo)
    assert back == info and back.input_shape == (8, 6, 3) and back.num_classes == 2
    info.save(tmp_path / "elsewhere.json")  # for callers holding a path
    assert DataInfo.load(tmp_path / "elsewhere.json") == info
    (tmp_path / "old.json").write_text('{"class_names": ["a", "b"]}')
    with pytest.raises(TfcnnError, match="schema None, this tfcnn reads 'tfcnn.data/1'"):
        DataInfo.load(tmp_path / "old.json")


def json_of(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


# --------------------------------------------------------------------------- numpy


def test_numpy_source_and_channel_conversion(tmp_path, npz_path, npz_rgb_path):
    b = load_data(data_cfg(source=f"numpy:{npz_path}"))
    assert b.info.class_names == ["class_0", "class_1", "class_2"] and b.info.input_shape == (16, 16, 1)
    assert (b.info.num_train + b.info.num_val, b.info.num_test) == (240, 90)
    grey = load_data(data_cfg(source=f"numpy:{npz_rgb_path}", channels=1, image_size=[8, 8]))
    with np.load(npz_rgb_path) as z:
        x_test = z["x_test"]
    assert grey.info.input_shape == (8, 8, 1)
    # an array source is converted exactly like the same pixels read from an image file
    expected = load_image(save(Image.fromarray(x_test[0]), tmp_path / "x0.png"), (8, 8), 1)
    assert any(np.array_equal(expected, row) for row in grey.arrays["test"][0])


def test_numpy_nhw_without_test_split_and_names(tmp_path):
    x, y = synthetic_arrays(100, size=10, seed=9)
    np.savez(tmp_path / "a.npz", x_train=x[..., 0], y_train=y.astype(np.int64))
    b = load_data(data_cfg(source=f"numpy:{tmp_path / 'a.npz'}", test_fraction=0.2, val_fraction=0.0))
    assert b.info.input_shape == (10, 10, 1) and b.info.class_names == ["0", "1", "2"]
    assert (b.info.num_train, b.info.num_test) == (80, 20)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"y_train": lambda y: np.where(y == 2, 3, y)}, r"y_train contains label 3, outside \[0, 3\)"),
        ({"y_test": lambda y: y - 1}, r"y_test contains label -1"),
        ({"x_train": lambda x: x.astype(np.float32) / 255}, r"x_train has dtype float32; images must be uint8"),
        ({"y_train": lambda y: y.astype(np.float32)}, r"y_train has dtype float32; labels must be integer"),
        ({"y_train": lambda y: np.zeros_like(y)}, r"every training image is in one class \('class_0'\)"),
        ({"y_train": lambda y: np.where(y == 2, 1, y)}, r"1 of 3 classes have no training images: 'class_2' \(id 2\)"),
        ({"x_test": lambda x: x[:, :, :, :1].repeat(2, axis=-1)}, r"x_test has shape .*C = 1 or 3"),
    ],
)
def test_numpy_bad_data_is_one_clear_error(tmp_path, npz_path, change, message):
    with np.load(npz_path) as z:
        arrays = {k: z[k] for k in z.files}
    for key, fn in change.items():
        arrays[key] = fn(arrays[key])
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_data(data_cfg(source=f"numpy:{tmp_path / 'bad.npz'}"))


def test_numpy_missing_key_and_missing_file(tmp_path):
    np.savez(tmp_path / "k.npz", x_train=np.zeros((4, 2, 2), np.uint8))
    with pytest.raises(DataError, match="missing key 'y_train'"):
        load_data(data_cfg(source=f"numpy:{tmp_path / 'k.npz'}"))
    with pytest.raises(DataError, match="no such file"):
        load_data(data_cfg(source=f"numpy:{tmp_path / 'nope.npz'}"))


# --------------------------------------------------------------------------- augmentation


def test_augmentation_keeps_dtype_and_shape_changes_pixels_and_is_seeded(npz_rgb_path):
    import tensorflow as tf

    aug = {"flip": True, "translate": 0.1, "rotate": 0.05, "zoom": 0.1, "contrast": 0.3, "cutout": 0.25}
    plain = load_data(data_cfg(source=f"numpy:{npz_rgb_path}", batch_size=40))
    a = load_data(data_cfg(source=f"numpy:{npz_rgb_path}", batch_size=40, augment=aug))
    b = load_data(data_cfg(source=f"numpy:{npz_rgb_path}", batch_size=40, augment=aug))

    def epoch(bundle):
        return np.concatenate([xb.numpy() for xb, _ in bundle.train])

    xa1, xa2, xb1, x0 = epoch(a), epoch(a), epoch(b), epoch(plain)
    assert xa1.dtype == np.uint8 and xa1.shape == x0.shape == (216, 16, 16, 3)
    assert (xa1 != x0).mean() > 0.3  # same shuffle order, different pixels
    assert np.array_equal(xa1, xb1)  # same seed, same augmentation
    assert (xa1 != xa2).mean() > 0.3  # new draws every epoch
    assert np.array_equal(a.arrays["train"][0], plain.arrays["train"][0])  # arrays stay un-augmented
    assert np.array_equal(epoch_of(a.val), epoch_of(plain.val))  # only train is augmented

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    batches = [strategy.experimental_local_results(xb)[0] for xb, _ in strategy.experimental_distribute_dataset(a.train)]
    assert sum(int(t.shape[0]) for t in batches) == 216 and batches[0].dtype == tf.uint8


def epoch_of(ds) -> np.ndarray:
    return np.concatenate([xb.numpy() for xb, _ in ds])


def test_cutout_paints_one_square_per_image_with_the_fill():
    import tensorflow as tf

    from tfcnn.data.augment import cutout_batch

    x = tf.fill([64, 16, 16, 3], 200.0)
    out = cutout_batch(x, 0.5, tf.constant([1, 2], tf.int64), fill=[10.0, 20.0, 30.0]).numpy()
    painted = (out == [10.0, 20.0, 30.0]).all(axis=-1).reshape(64, -1).sum(axis=1)
    untouched = (out == 200.0).all(axis=-1).reshape(64, -1).sum(axis=1)
    assert ((painted >= 16) & (painted <= 64)).all()  # an 8x8 square, possibly cut by the border
    assert (painted + untouched == 256).all() and len(set(painted.tolist())) > 1
    again = cutout_batch(x, 0.5, tf.constant([1, 2], tf.int64), fill=[10.0, 20.0, 30.0]).numpy()
    assert np.array_equal(out, again)  # stateless: the seed decides
