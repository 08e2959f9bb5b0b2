"""`data.source = "masks:<dir>"`: users' own images with class-id or palette PNG masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfcnn.config import from_dict
from tfcnn.errors import DataError


def _write(root: Path, n: int = 12, size: int = 32, palette: bool = True) -> list[np.ndarray]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("cat\ndog\n")
    rng = np.random.default_rng(0)
    masks = []
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        c = 1 + i % 2
        mask[4 : 4 + 10 + i % 5, 6 : 20] = c
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        img[mask > 0] = (200, 50, 50) if c == 1 else (50, 200, 50)
        Image.fromarray(img).save(root / "images" / f"im{i:02d}.png")
        m = Image.fromarray(mask)
        if palette:
            m = m.convert("P")
            m.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 - 3) * 3)
        m.save(root / "masks" / f"im{i:02d}.png")
        masks.append(mask)
    return masks


def _bundle(root: Path):
    from tfcnn.data import load_data

    cfg = from_dict({"task": "segmentation", "model": {"name": "unet"}, "data": {"source": f"masks:{root}", "batch_size": 4, "test_fraction": 0.25}})
    return load_data(cfg.data)


@pytest.mark.parametrize("palette", [True, False])
def test_class_id_and_palette_masks_read_back_exactly(tmp_path, palette):
    masks = _write(tmp_path / "d", palette=palette)
    b = _bundle(tmp_path / "d")
    assert b.info.class_names == ["cat", "dog"] and b.info.label_kind == "masks"
    x, y = b.arrays["test"]
    assert y.dtype == np.uint8 and y.shape[1:] == (32, 32) and set(np.unique(y)) <= {0, 1, 2}
    every = np.concatenate([b.arrays[s][1] for s in ("train", "val", "test")])
    assert sorted(m.sum() for m in every) == sorted(m.sum() for m in np.stack(masks))  # the same masks, split


def test_bad_mask_folders_are_one_line_naming_the_file(tmp_path):
    from tfcnn.data.mask_folder import read_mask_folder

    root = tmp_path / "d"
    _write(root, n=3)
    Image.fromarray(np.full((32, 32), 5, np.uint8)).save(root / "masks" / "im01.png")
    with pytest.raises(DataError, match=r"im01.png: mask value 5 but classes.txt lists 2 classes"):
        read_mask_folder(root)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "masks" / "im01.png")
    with pytest.raises(DataError, match=r"im01.png: mask is a RGB image"):
        read_mask_folder(root)
    (root / "masks" / "im01.png").unlink()
    with pytest.raises(DataError, match=r"im01.png: no mask"):
        read_mask_folder(root)
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="classes.txt is missing"):
        read_mask_folder(root)


def test_mixed_sizes_need_image_size_and_resize_masks_with_nearest(tmp_path):
    from tfcnn.data.mask_folder import read_mask_folder

    root = tmp_path / "d"
    _write(root, n=3)
    big = np.zeros((48, 40), np.uint8)
    big[10:30, 10:30] = 2
    Image.fromarray(np.zeros((48, 40, 3), np.uint8)).save(root / "images" / "im02.png")
    Image.fromarray(big).save(root / "masks" / "im02.png")
    with pytest.raises(DataError, match="set data.image_size"):
        read_mask_folder(root)
    x, y, names, notes = read_mask_folder(root, (32, 32))
    assert x.shape == (3, 32, 32, 3) and set(np.unique(y[2])) == {0, 2}  # nearest: no in-between ids
    assert any("resized" in n for n in notes)
