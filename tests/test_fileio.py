"""tool/fileio.py: atomic writes."""

import numpy as np
import pytest

from tool.fileio import atomic_path, save_npy


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
