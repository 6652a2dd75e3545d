"""engine/fileio.py: atomic writes, and label PNGs in the VOC palette read back as class indices."""

import numpy as np
import pytest
from PIL import Image

from engine.datasets import PALETTE as VOC_PALETTE
from engine.fileio import atomic_path, read_label_png, save_label_png, save_npy


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros(2))
    atomic = tmp_path / "atomic.npy"
    save_npy(atomic, np.zeros(2))
    assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_a_failed_write_leaves_neither_file_nor_temp(tmp_path):
    target = tmp_path / "out.npy"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []


def test_save_label_png_writes_a_voc_palette_png(tmp_path):
    label = np.random.default_rng(0).integers(0, 21, (7, 9)).astype(np.uint8)
    label[0, 0] = 255
    save_label_png(tmp_path / "label.png", label)
    with Image.open(tmp_path / "label.png") as png:
        assert png.mode == "P"
        assert np.array_equal(np.asarray(png.getpalette(), np.uint8).reshape(-1, 3), VOC_PALETTE)
    np.testing.assert_array_equal(read_label_png(tmp_path / "label.png"), label)


def test_save_label_png_rejects_non_uint8(tmp_path):
    with pytest.raises(AssertionError):
        save_label_png(tmp_path / "label.png", np.zeros((2, 2), np.int64))
