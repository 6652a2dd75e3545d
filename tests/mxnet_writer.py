"""Test-only writer of MXNet NDArray-list `.params` files, written straight from SPEC §1 and
sharing nothing with network/mxnet_params.py, so the reader is tested against files made
independently of it."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HEADERS = ("v2", "v1", "legacy")
_DTYPE_FLAG = {
    np.dtype(np.float32): 0,
    np.dtype(np.float64): 1,
    np.dtype(np.float16): 2,
    np.dtype(np.uint8): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int8): 5,
    np.dtype(np.int64): 6,
}


def array_bytes(
    array: np.ndarray, header: str = "v2", storage_type: int = 0, context: tuple[int, int] = (1, 0)
) -> bytes:
    """One array as SPEC §1 lays it out. An array with no axes is written as MXNet's empty
    array: the shape alone, no context, dtype or data."""
    assert header in HEADERS, header
    array = np.asarray(array)
    if header == "v2":
        out = struct.pack("<Ii", 0xF993FAC9, storage_type)
    elif header == "v1":
        out = struct.pack("<I", 0xF993FAC8)
    else:
        out = b""
    if header == "legacy":
        out += struct.pack(f"<I{array.ndim}I", array.ndim, *array.shape)
    else:
        out += struct.pack(f"<I{array.ndim}q", array.ndim, *array.shape)
    if array.ndim == 0:
        return out
    out += struct.pack("<iii", *context, _DTYPE_FLAG[array.dtype])
    return out + np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def ndarray_list_bytes(
    arrays: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    headers: str | Sequence[str] = "v2",
    storage_type: int = 0,
) -> bytes:
    """A whole file: magic, reserved word, the arrays, the names (none when `names` is None).
    `headers` is one variant for all arrays or one per array."""
    if isinstance(headers, str):
        headers = [headers] * len(arrays)
    out = struct.pack("<QQQ", 0x112, 0, len(arrays))
    for array, header in zip(arrays, headers, strict=True):
        out += array_bytes(array, header, storage_type)
    names = list(names or [])
    out += struct.pack("<Q", len(names))
    for name in names:
        encoded = name.encode("ascii")
        out += struct.pack("<Q", len(encoded)) + encoded
    return out


def write_ndarray_list(
    path: str | Path,
    arrays: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    headers: str | Sequence[str] = "v2",
    storage_type: int = 0,
) -> Path:
    path = Path(path)
    path.write_bytes(ndarray_list_bytes(arrays, names, headers, storage_type))
    return path


def write_imagenet_ends(path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A legacy-header `.params` holding the ends of an ImageNet ResNet-38 (conv1a, bn7 with its moving
    statistics, the 1000-class linear layer the CAM networks leave out): the file and its arrays by name."""
    rng = np.random.default_rng(0)
    arrays = {
        "arg:conv1a_weight": rng.standard_normal((64, 3, 3, 3)).astype(np.float32),
        "arg:bn7_gamma": rng.standard_normal(4096).astype(np.float32),
        "arg:bn7_beta": rng.standard_normal(4096).astype(np.float32),
        "aux:bn7_moving_mean": rng.standard_normal(4096).astype(np.float32),
        "aux:bn7_moving_var": rng.random(4096).astype(np.float32),
        "arg:linear1000_weight": np.zeros((1000, 4096), np.float32),
    }
    return write_ndarray_list(path, list(arrays.values()), list(arrays), headers="legacy"), arrays
