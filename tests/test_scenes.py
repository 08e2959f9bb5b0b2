"""Generated scenes, box/mask bundling, the COCO reader/writer and the TFDS detection offline error.

Real Fashion-MNIST items from the Debian package, real generated scenes, a few dozen at most.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tfcnn.config import AugmentConfig, DataConfig, PipelineConfig, ScenesConfig
from tfcnn.data import scenes
from tfcnn.data.boxes import iou, valid_rows
from tfcnn.errors import ConfigError, DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="Fashion-MNIST IDX files absent (apt-get install dataset-fashion-mnist)"
)


@pytest.fixture(scope="module")
def items():
    if not FASHION_DIR.is_dir():
        pytest.skip("Fashion-MNIST IDX files absent (apt-get install dataset-fashion-mnist)")
    return scenes.load_fashion_items(str(FASHION_DIR))


def small(**kw) -> ScenesConfig:
    base = dict(num_train=24, num_test=8, size=64)
    base.update(kw)
    return ScenesConfig(**base)


# --------------------------------------------------------------------------- generators


@needs_fashion
def test_fashion_scenes_are_byte_identical_for_a_seed(items):
    a_tr, a_te = scenes.fashion_scenes(small(), 7, *items)
    b_tr, b_te = scenes.fashion_scenes(small(), 7, *items)
    for a, b in ((a_tr, b_tr), (a_te, b_te)):
        for name in ("images", "boxes", "masks", "items"):
            assert getattr(a, name).tobytes() == getattr(b, name).tobytes()
    c_tr, _ = scenes.fashion_scenes(small(), 8, *items)
    assert c_tr.images.tobytes() != a_tr.images.tobytes()
    assert scenes.fashion_scenes(small(seed=7), 99, *items)[0].images.tobytes() == a_tr.images.tobytes()  # scenes.seed wins


def test_denser_training_scenes_leave_the_test_scenes_alone():
    from tfcnn.pipeline import validate

    cfg = ScenesConfig(num_train=60, num_test=60, size=96, min_objects=1, max_objects=2,
                       train_min_objects=3, train_max_objects=5, min_scale=1.0, max_scale=1.0)
    train, test = scenes.shapes_scenes(cfg, 4)
    assert train.boxes.shape[1] == test.boxes.shape[1] == 5  # M = the most objects any scene holds
    n_train = [len(valid_rows(lab)) for lab in train.boxes]
    n_test = [len(valid_rows(lab)) for lab in test.boxes]
    assert max(n_test) <= 2 and min(n_test) >= 1
    assert max(n_train) <= 5 and np.mean(n_train) > 3  # a placement may fail, most do not
    # the test scenes are the ones an unchanged config draws: same seed, same range
    plain = scenes.shapes_scenes(ScenesConfig(num_train=60, num_test=60, size=96, min_objects=1, max_objects=2,
                                              min_scale=1.0, max_scale=1.0), 4)[1]
    assert plain.images.tobytes() == test.images.tobytes()
    assert cfg.train_range() == (3, 5) and ScenesConfig(train_max_objects=6).train_range() == (1, 6)
    bad = PipelineConfig(task="detection", data=DataConfig(source="shapes", scenes=ScenesConfig(train_min_objects=5)))
    with pytest.raises(ConfigError, match=r"data.scenes.train_min_objects..train_max_objects is 5..4"):
        validate(bad)


@needs_fashion
def test_fashion_shapes_counts_and_iou_limit(items):
    cfg = small(min_objects=2, max_objects=5, max_iou=0.2)
    train, test = scenes.fashion_scenes(cfg, 3, *items)
    assert train.images.shape == (24, 64, 64) and train.images.dtype == np.uint8
    assert train.boxes.shape == (24, 5, 5) and train.boxes.dtype == np.float32
    assert train.masks.shape == (24, 64, 64) and test.images.shape == (8, 64, 64)
    for lab in train.boxes:
        rows = valid_rows(lab)
        assert len(rows) <= 5
        assert (lab[len(rows):] == -1).all()  # PAD rows last
        assert ((rows[:, :4] >= 0) & (rows[:, :4] <= 1)).all()
        assert set(rows[:, 4].astype(int)) <= set(range(10))
        if len(rows) > 1:
            m = iou(rows[:, :4], rows[:, :4])
            assert m[np.triu_indices(len(rows), 1)].max() <= 0.2 + 1e-6
        # pixel-exact boxes: edges on the pixel grid
        assert np.allclose(rows[:, :4] * 64, np.round(rows[:, :4] * 64), atol=1e-4)


@needs_fashion
def test_crowded_scenes_place_fewer_objects(items):
    cfg = ScenesConfig(num_train=10, num_test=1, size=32, min_objects=8, max_objects=8, min_scale=1.0, max_scale=1.0, max_iou=0.0)
    (x, y), _ = items
    train, _ = scenes.fashion_scenes(cfg, 1, (x, y), (x[:10], y[:10]))
    counts = (train.boxes[..., 4] >= 0).sum(1)
    assert counts.max() < 8 and counts.min() >= 1  # 28-px items on a 32-px canvas without overlap: rarely 2


@needs_fashion
def test_single_item_box_is_the_tight_ink_box(items):
    cfg = small(min_objects=1, max_objects=1, min_scale=1.0, max_scale=1.0, num_train=30)
    train, _ = scenes.fashion_scenes(cfg, 5, *items)
    x_train = items[0][0]
    heights = []
    for img, lab, mask, item in zip(train.images, train.boxes, train.masks, train.items):
        r0, c0, r1, c1 = scenes.tight_box(mask > 0)
        assert np.allclose(lab[0, :4] * 64, [r0, c0, r1, c1], atol=1e-4)
        assert mask[mask > 0].max() == lab[0, 4] + 1
        # the ink pasted is exactly the train item's ink (scale 1: no resampling)
        ink = x_train[item[0]] > scenes.INK_THRESHOLD
        rows, cols = np.nonzero(ink)
        assert (r1 - r0, c1 - c0) == (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
        heights.append(r1 - r0)
        assert img[mask > 0].min() > scenes.INK_THRESHOLD
    assert min(heights) < 28  # tight: an item that does not fill its 28x28 frame gets a smaller box


@needs_fashion
def test_train_scenes_use_only_train_items_and_test_only_test_items(items):
    (xtr, ytr), (xte, yte) = items
    lo_tr, hi_te = ytr < 5, yte >= 5  # disjoint class pools make leakage visible in the labels
    train, test = scenes.fashion_scenes(small(min_objects=2), 2, (xtr[lo_tr], ytr[lo_tr]), (xte[hi_te], yte[hi_te]))
    assert set(valid_rows(train.boxes.reshape(-1, 5))[:, 4].astype(int)) <= {0, 1, 2, 3, 4}
    assert set(valid_rows(test.boxes.reshape(-1, 5))[:, 4].astype(int)) <= {5, 6, 7, 8, 9}
    # with the real pools, items index the pool they came from
    train, test = scenes.fashion_scenes(small(), 2, *items)
    used = train.items[train.items >= 0]
    assert used.max() < len(xtr) and test.items[test.items >= 0].max() < len(xte)
    rows = valid_rows(train.boxes.reshape(-1, 5))
    assert np.array_equal(rows[:, 4].astype(int), ytr[used])


@needs_fashion
def test_masks_and_background(items):
    train, _ = scenes.fashion_scenes(small(background=0.15), 4, *items)
    assert train.masks.max() <= 10
    fg = train.mask_labels("foreground")
    assert set(np.unique(fg)) <= {0, 1}
    for img, lab, mask in zip(train.images, train.boxes, train.masks):
        inside = np.zeros_like(mask, bool)
        for r in valid_rows(lab):
            y0, x0, y1, x1 = (int(round(v * 64)) for v in r[:4])
            inside[y0:y1, x0:x1] = True
        assert not (mask > 0)[~inside].any()  # every mask pixel is inside some box
        bg = img[mask == 0].astype(float)
        assert bg.std() > 3 and bg.max() <= 0.15 * 255 + 1  # textured, within the amplitude


def test_shapes_scenes_deterministic_and_tight():
    cfg = ScenesConfig(num_train=20, num_test=5, size=48, min_objects=1, max_objects=1)
    a, _ = scenes.shapes_scenes(cfg, 0)
    b, _ = scenes.shapes_scenes(cfg, 0)
    assert a.images.tobytes() == b.images.tobytes() and a.boxes.tobytes() == b.boxes.tobytes()
    assert set(a.boxes[:, 0, 4].astype(int)) <= {0, 1, 2}
    for lab, mask in zip(a.boxes, a.masks):
        assert np.allclose(lab[0, :4] * 48, scenes.tight_box(mask > 0), atol=1e-4)


# --------------------------------------------------------------------------- bundles


def test_shapes_bundle_boxes_and_masks_structure():
    from tfcnn.data.load import load_data

    cfg = DataConfig(source="shapes", scenes=small(labels="boxes"), batch_size=8, val_fraction=0.25)
    b = load_data(cfg)
    assert b.info.label_kind == "boxes" and b.info.max_objects == 4 and b.info.class_names == scenes.SHAPE_CLASSES
    assert (b.info.num_train, b.info.num_val, b.info.num_test) == (18, 6, 8)
    for ds in (b.train, b.val, b.test):
        x_spec, y_spec = ds.element_spec
        assert x_spec.dtype.name == "uint8" and tuple(x_spec.shape[1:]) == (64, 64, 1)
        assert y_spec.dtype.name == "float32" and tuple(y_spec.shape[1:]) == (4, 5)
    cfg = DataConfig(source="shapes", scenes=small(labels="masks"), batch_size=8, image_size=[32, 32], channels=3)
    b = load_data(cfg)
    assert b.info.label_kind == "masks" and b.info.input_shape == (32, 32, 3) and b.info.max_objects is None
    x, y = next(iter(b.test))
    assert x.shape[1:] == (32, 32, 3) and y.dtype.name == "uint8" and y.shape[1:] == (32, 32)
    assert set(np.unique(y.numpy())) <= {0, 1, 2, 3}  # nearest resize: no blended ids
    assert any("masks (nearest)" in n for n in b.info.notes)


@needs_fashion
def test_fashion_scenes_source_and_old_data_json(tmp_path):
    from tfcnn.data.info import DataInfo
    from tfcnn.data.load import load_data

    cfg = DataConfig(source="fashion_scenes", scenes=small(labels="masks", mask_classes="foreground"), batch_size=4)
    b = load_data(cfg)
    assert b.info.class_names == ["object"] and set(np.unique(b.arrays["train"][1])) <= {0, 1}
    b = load_data(DataConfig(source="fashion_scenes", scenes=small(labels="boxes"), batch_size=4, max_objects=6))
    assert len(b.info.class_names) == 10 and b.arrays["train"][1].shape[1:] == (6, 5)
    b.info.save(tmp_path / "data.json")
    d = json.loads((tmp_path / "data.json").read_text())
    assert DataInfo.from_dict(d).label_kind == "boxes"
    del d["label_kind"], d["max_objects"]  # a data.json written before detection
    old = DataInfo.from_dict(d)
    assert old.label_kind == "classes" and old.max_objects is None


def test_label_strata():
    from tfcnn.data.bundle import label_strata

    boxes = np.full((3, 2, 5), -1, np.float32)
    boxes[0, 0] = [0, 0, 1, 1, 2]
    boxes[1, 0] = [0, 0, 1, 1, 0]
    assert label_strata(boxes, "boxes").tolist() == [2, 0, -1]
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[0, :2] = 3
    masks[0, 3] = 1
    masks[1, 0, 0] = 2
    assert label_strata(masks, "masks").tolist() == [2, 1, -1]
    y = np.array([1, 0, 1], np.int32)
    assert label_strata(y) is y


@pytest.mark.parametrize(
    "row, needle",
    [
        ([0.1, 0.1, 1.2, 0.5, 0], "normalised to [0, 1]"),
        ([0.6, 0.1, 0.5, 0.5, 0], "ymin <= ymax"),
        ([0.1, 0.1, 0.5, 0.5, 3], "class id outside [0, 3)"),
        ([0.1, 0.1, 0.5, 0.5, 0.5], "whole numbers"),
    ],
)
def test_bad_box_labels_are_one_data_error(row, needle):
    from tfcnn.data.inmemory import from_label_arrays

    x = np.zeros((4, 16, 16), np.uint8)
    y = np.full((4, 2, 5), -1, np.float32)
    y[:, 0] = [0.1, 0.1, 0.5, 0.5, 1]
    y[2, 1] = row
    with pytest.raises(DataError) as e:
        from_label_arrays(DataConfig(), (x, y), None, ["a", "b", "c"], label_kind="boxes", source="t")
    assert needle in str(e.value) and "image 2 row 1" in str(e.value) and "\n" not in str(e.value)


def test_bad_masks_are_one_data_error():
    from tfcnn.data.inmemory import from_label_arrays

    x = np.zeros((4, 16, 16), np.uint8)
    with pytest.raises(DataError, match="mask value 5, above 3"):
        m = np.zeros((4, 16, 16), np.uint8)
        m[0, 0, 0] = 5
        from_label_arrays(DataConfig(), (x, m), None, ["a", "b", "c"], label_kind="masks")
    with pytest.raises(DataError, match="like the images"):
        from_label_arrays(DataConfig(), (x, np.zeros((4, 8, 8), np.uint8)), None, ["a"], label_kind="masks")
    with pytest.raises(DataError, match="must be uint8"):
        from_label_arrays(DataConfig(), (x, np.zeros((4, 16, 16), np.int64)), None, ["a"], label_kind="masks")


# --------------------------------------------------------------------------- config checks


@pytest.mark.parametrize("key, value", [("rotate", 0.1), ("cutout", 0.2), ("mixup", 0.2), ("resized_crop", True)])
def test_unmovable_augment_keys_refused_in_the_config_check(key, value):
    from tfcnn.data.sources import check_data

    aug = AugmentConfig(**{key: value})
    for source, task in (("shapes", "classification"), ("fashion_scenes", "segmentation"), ("coco:/x/a.json", "classification")):
        cfg = PipelineConfig(task=task, data=DataConfig(source=source, augment=aug))
        with pytest.raises(ConfigError, match=rf"data\.augment\.{key} cannot move"):
            check_data(cfg)
    check_data(PipelineConfig(data=DataConfig(source="fashion_mnist", augment=aug)))  # classification: unchanged
    resolved = PipelineConfig(data=DataConfig(source="shapes", augment=aug, scenes=ScenesConfig(labels="masks")))
    with pytest.raises(ConfigError, match=rf"data\.augment\.{key} cannot move masks labels"):
        check_data(resolved)  # as config validation leaves it: scenes.labels resolved


def test_scene_and_coco_source_checks():
    from tfcnn.data.sources import check_source

    with pytest.raises(ConfigError, match="annotations.json"):
        check_source(DataConfig(source="coco:/x/ann.txt"))
    with pytest.raises(ConfigError, match=r"data.max_objects = 2 < 4, the most objects a scene holds"):
        check_source(DataConfig(source="shapes", max_objects=2))
    with pytest.raises(ConfigError, match=r"data.max_objects = 4 < 6, the most objects a scene holds"):
        check_source(DataConfig(source="shapes", max_objects=4, scenes=ScenesConfig(train_max_objects=6)))
    check_source(DataConfig(source="fashion_scenes", augment=AugmentConfig(flip=True, zoom=0.1)))


# --------------------------------------------------------------------------- COCO and TFDS


def test_coco_round_trip(tmp_path):
    from tfcnn.data.coco_format import read_coco, write_coco
    from tfcnn.data.load import load_data

    train, _ = scenes.shapes_scenes(ScenesConfig(num_train=20, num_test=1, size=40), 11)
    path = write_coco(tmp_path / "coco", train.images, train.boxes, scenes.SHAPE_CLASSES)
    back = read_coco(path, max_objects=4)
    assert back.class_names == scenes.SHAPE_CLASSES
    assert np.array_equal(back.images[..., 0], train.images)
    assert np.allclose(back.labels, train.boxes, atol=1e-6)
    b = load_data(DataConfig(source=f"coco:{path}", max_objects=4, test_fraction=0.2, val_fraction=0.2))
    assert b.info.label_kind == "boxes" and b.info.num_test == 4 and b.info.num_train + b.info.num_val == 16
    # images elsewhere: data.path is the root the file names are relative to
    moved = tmp_path / "ann.json"
    moved.write_text(path.read_text())
    assert read_coco(moved, image_root=path.parent).images.shape == (20, 40, 40, 1)


def test_coco_errors(tmp_path):
    from tfcnn.data.coco_format import read_coco, write_coco

    train, _ = scenes.shapes_scenes(ScenesConfig(num_train=6, num_test=1, size=32, min_objects=3, max_objects=3, max_iou=1.0), 1)
    path = write_coco(tmp_path, train.images, train.boxes, scenes.SHAPE_CLASSES)
    with pytest.raises(DataError) as e:
        read_coco(path, max_objects=2)
    msg = str(e.value)
    assert "images/000000.png" in msg and "has 3 objects" in msg and "data.max_objects = 2" in msg and "\n" not in msg
    (tmp_path / "images" / "000004.png").unlink()
    with pytest.raises(DataError, match="000004.png"):
        read_coco(path)
    doc = json.loads(path.read_text())
    doc["categories"] = [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}]
    for a in doc["annotations"]:
        a["category_id"] = 7 if a["category_id"] == 1 else 3
    doc["images"] = doc["images"][:4]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] <= 4]
    path.write_text(json.dumps(doc))
    d = read_coco(path)
    assert d.class_names == ["a", "b"]  # category-id order, contiguous ids


def test_tfds_detection_offline_is_one_data_error(tmp_path, monkeypatch):
    from tfcnn.data import tfds_source
    from tfcnn.data.load import load_data

    monkeypatch.setattr(tfds_source, "online", lambda timeout=3.0: False)  # never probe the network
    for name in ("voc/2007", "coco/2017"):
        with pytest.raises(DataError) as e:
            load_data(DataConfig(source=f"tfds_detection:{name}", path=str(tmp_path)))
        msg = str(e.value)
        assert "is not downloaded" in msg and f"tfds build {name}" in msg and "\n" not in msg
