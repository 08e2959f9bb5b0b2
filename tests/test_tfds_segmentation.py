"""The TFDS segmentation loader: trimap codes -> tfcnn classes, resizing (nearest masks), the
no-I/O checks, the offline error, and TFDS' own mocked pet examples (real features, random
pixels) refused by value. No network is touched: TFDS' online probe is replaced."""

from __future__ import annotations

import numpy as np
import pytest

from tfcnn.config import DataConfig
from tfcnn.data import tfds_segmentation as ts
from tfcnn.errors import ConfigError, DataError

PET = ts.KNOWN["oxford_iiit_pet"]


def trimap(h: int, w: int) -> np.ndarray:
    """A pet (1) in an outline band (3) on background (2), the pet set's codes."""
    m = np.full((h, w, 1), 2, np.uint8)
    m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 3
    m[h // 4 + 2 : 3 * h // 4 - 2, w // 4 + 2 : 3 * w // 4 - 2] = 1
    return m


def test_trimap_codes_become_background_pet_border():
    m = trimap(20, 24)
    out = ts.to_class_mask(m, PET, "x")
    assert out.dtype == np.uint8 and out.shape == (20, 24)
    assert (out[m[..., 0] == 2] == 0).all() and (out[m[..., 0] == 1] == 1).all() and (out[m[..., 0] == 3] == 2).all()
    assert PET.class_names == ("pet", "border")  # tfcnn class c is mask value c + 1
    bad = m.copy()
    bad[0, 0] = 7
    with pytest.raises(DataError, match=r"x: mask values \[7\] are not in the segmentation_mask codes \[1, 2, 3\]"):
        ts.to_class_mask(bad, PET, "x")


def test_examples_resize_images_bilinear_and_masks_nearest():
    rng = np.random.default_rng(0)
    examples = [
        {"image": rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), "segmentation_mask": trimap(40, 48), "file_name": b"cat_1.jpg"},
        {"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "segmentation_mask": trimap(32, 32), "file_name": b"dog_2.jpg"},
    ]
    x, y = ts.to_arrays(examples, PET, (32, 32), "pets")
    assert x.shape == (2, 32, 32, 3) and y.shape == (2, 32, 32) and x.dtype == y.dtype == np.uint8
    assert set(np.unique(y)) == {0, 1, 2}  # nearest: no value between classes appears
    np.testing.assert_array_equal(x[1], examples[1]["image"])  # already the size: untouched
    np.testing.assert_array_equal(y[1], ts.to_class_mask(trimap(32, 32), PET, ""))
    mismatch = [{"image": np.zeros((10, 10, 3), np.uint8), "segmentation_mask": trimap(12, 10), "file_name": b"odd.jpg"}]
    with pytest.raises(DataError, match=r"pets example odd.jpg: image 10x10 but mask 12x10"):
        ts.to_arrays(mismatch, PET, (8, 8), "pets")


def test_tfds_mocked_pet_examples_are_refused():
    """TFDS' mock of the real pet features draws random sizes and mask pixels: neither an image
    and mask of one size nor trimap codes, each refused in one line naming the example."""
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        examples = tfds.as_numpy(tfds.builder("oxford_iiit_pet").as_dataset(split="train"))
        with pytest.raises(DataError, match=r"^mock example .*: (image \d+x\d+ but mask \d+x\d+|mask values .* are not in)"):
            ts.to_arrays(examples, PET, (16, 16), "mock")


def test_config_checks_and_offline_error(tmp_path, monkeypatch):
    from tfcnn.data import tfds_source
    from tfcnn.data.load import load_data
    from tfcnn.data.sources import check_source, label_kind_of

    with pytest.raises(ConfigError, match=r"set data.image_size = \[height, width\]"):
        check_source(DataConfig(source="tfds_segmentation:oxford_iiit_pet"))
    with pytest.raises(ConfigError, match="tfds_segmentation:voc/2012 is not a set this loader knows"):
        check_source(DataConfig(source="tfds_segmentation:voc/2012", image_size=(64, 64)))
    check_source(DataConfig(source="tfds_segmentation:oxford_iiit_pet", image_size=(64, 64)))
    assert label_kind_of(DataConfig(source="tfds_segmentation:oxford_iiit_pet")) == "masks"
    monkeypatch.setattr(tfds_source, "online", lambda timeout=3.0: False)  # never probe the network
    with pytest.raises(DataError) as e:
        load_data(DataConfig(source="tfds_segmentation:oxford_iiit_pet", image_size=(64, 64), path=str(tmp_path)))
    msg = str(e.value)
    assert "is not downloaded" in msg and "tfds build oxford_iiit_pet" in msg and "\n" not in msg
