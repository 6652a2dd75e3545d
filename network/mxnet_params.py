"""Read MXNet `.params` files (an NDArray list, SPEC §1) with numpy alone, and map their
parameter names to ours, so the ImageNet ResNet-38 weights load without the dead `mxnet`
package.

CLI: `python -m network.mxnet_params IN.params OUT.pth` writes the converted state dict."""

from __future__ import annotations

import argparse
import math
import os
import re
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from engine.errors import UserError, run_main
from engine.fileio import atomic_path

# SPEC §1: the file format (everything little-endian).
LIST_MAGIC = 0x112
ARRAY_V2_MAGIC = 0xF993FAC9  # storage type, then int64 dims
ARRAY_V1_MAGIC = 0xF993FAC8  # int64 dims
# Any other first word is a legacy header: that word is ndim, followed by uint32 dims.
DENSE_STORAGE = 0
DTYPE_FLAGS = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
}
# No real array has more axes; a bigger "ndim" means these bytes are not an array header
# (garbage, or the numpy-shape format of MXNet 2, which SPEC §1 does not cover).
MAX_NDIM = 32


class _Truncated(Exception):
    """The file ended inside a field."""


class _Stream:
    """Little-endian fields read from an open file that knows its own size, so a corrupt
    length is reported as truncation before anything is allocated for it."""

    def __init__(self, handle: BinaryIO, size: int):
        self.handle = handle
        self.size = size

    def read_bytes(self, count: int) -> bytearray:
        if count < 0 or self.handle.tell() + count > self.size:
            raise _Truncated
        buffer = bytearray(count)
        if self.handle.readinto(buffer) != count:
            raise _Truncated
        return buffer

    def read(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.read_bytes(struct.calcsize("<" + fmt)))

    def read_one(self, fmt: str) -> int:
        return self.read(fmt)[0]


def _read_shape(stream: _Stream, first_word: int, path: Path, index: int) -> tuple[int, ...]:
    """The shape after an array's first uint32, in whichever of SPEC §1's three headers it uses."""
    if first_word == ARRAY_V2_MAGIC:
        storage_type = stream.read_one("i")
        if storage_type != DENSE_STORAGE:
            raise UserError(
                f"{path}: array {index} uses sparse storage (type {storage_type}); only dense "
                "arrays are supported: convert it with .tostype('default') in mxnet and save again"
            )
    if first_word in (ARRAY_V2_MAGIC, ARRAY_V1_MAGIC):
        ndim, dim_format = stream.read_one("I"), "q"
    else:
        ndim, dim_format = first_word, "I"
    if ndim > MAX_NDIM:
        raise UserError(
            f"{path}: array {index} has an unknown header (0x{first_word:08X}): not an MXNet "
            "1.x .params file (NDArray list saved with mxnet.nd.save)"
        )
    shape = stream.read(f"{ndim}{dim_format}")
    if any(dim < 0 for dim in shape):
        raise UserError(f"{path}: array {index} has an unknown shape {shape}: re-save it with its shape set")
    return shape


def _read_array(stream: _Stream, path: Path, index: int) -> np.ndarray:
    shape = _read_shape(stream, stream.read_one("I"), path, index)
    if not shape:
        # SPEC §1: an array with ndim 0 is MXNet's empty ("none") array and stores nothing more.
        return np.zeros((0,), np.float32)
    stream.read("ii")  # context: device type and id, meaningless here
    dtype_flag = stream.read_one("i")
    if dtype_flag not in DTYPE_FLAGS:
        raise UserError(
            f"{path}: array {index} has unknown dtype flag {dtype_flag}: not an MXNet .params "
            "file, or one with a dtype this reader does not know (bfloat16, bool)"
        )
    dtype = DTYPE_FLAGS[dtype_flag]
    data = stream.read_bytes(math.prod(shape) * dtype.itemsize)
    return np.frombuffer(data, dtype).astype(dtype.newbyteorder("="), copy=False).reshape(shape)


def read_ndarray_list(path: str | os.PathLike) -> tuple[list[np.ndarray], list[str]]:
    """The arrays and names of an NDArray list as `mxnet.nd.save` writes it (SPEC §1).
    `names` is empty when the file saved a plain list; otherwise it has one name per array."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"MXNet .params file not found: {path}")
    with open(path, "rb") as handle:
        stream = _Stream(handle, os.fstat(handle.fileno()).st_size)
        try:
            magic, _reserved = stream.read("QQ")
        except _Truncated:
            magic = None
        if magic != LIST_MAGIC:
            raise UserError(
                f"{path} is not an MXNet .params file (it does not start with the NDArray list "
                "magic 0x112); pass the file written by mxnet.nd.save / Module.save_params"
            )
        arrays = []
        try:
            array_count = stream.read_one("Q")
            for index in range(array_count):
                arrays.append(_read_array(stream, path, index))
        except _Truncated:
            raise UserError(f"{path} is truncated at array {len(arrays)}: download or copy it again") from None
        try:
            names = [_read_name(stream) for _ in range(stream.read_one("Q"))]
        except _Truncated:
            raise UserError(f"{path} is truncated in its list of names: download or copy it again") from None
        except UnicodeDecodeError:
            raise UserError(f"{path} has a parameter name that is not text: not an MXNet .params file") from None
    if names and len(names) != len(arrays):
        raise UserError(f"{path} has {len(arrays)} arrays but {len(names)} names: the file is corrupt")
    return arrays, names


def _read_name(stream: _Stream) -> str:
    return stream.read_bytes(stream.read_one("Q")).decode("ascii")


# SPEC §1 name mapping. MXNet stage digit + block letter: `a` is the stage's first block
# (`res4a` -> `b4`), `bK` its K-th follower (`res4b3` -> `b4_3`).
_BLOCK = r"(?P<stage>[2-7])(?P<block>a|b[1-9][0-9]*)"
_BRANCH = r"(?P<branch>branch1|branch2a|branch2b1|branch2b2)"
_BN_PARAM = r"(?P<param>gamma|beta|moving_mean|moving_var)"
_BLOCK_CONV = re.compile(rf"res{_BLOCK}_{_BRANCH}(?:_weight)?")
_BLOCK_BN = re.compile(rf"bn{_BLOCK}_{_BRANCH}_{_BN_PARAM}")
_FINAL_BN = re.compile(rf"bn7_{_BN_PARAM}")
_FIRST_CONV = re.compile(r"conv1a(?:_weight)?")
_IMAGENET_CLASSIFIER = re.compile(r"linear1000(?:_weight|_bias)?")
_ARG_AUX_PREFIX = re.compile(r"^(?:arg|aux):")
_BN_PARAM_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}


def _block_name(match: re.Match) -> str:
    stage, block = match["stage"], match["block"]
    return f"b{stage}" if block == "a" else f"b{stage}_{block[1:]}"


def torch_parameter_name(mxnet_name: str) -> str | None:
    """Our name for an MXNet ResNet-38 parameter (SPEC §1), e.g. `arg:res4b3_branch2a_weight`
    -> `b4_3.conv_branch2a.weight`; None for the ImageNet classifier `linear1000`, which
    no model here has. ValueError for any other name."""
    name = _ARG_AUX_PREFIX.sub("", mxnet_name)
    if _FIRST_CONV.fullmatch(name):
        return "conv1a.weight"
    if _IMAGENET_CLASSIFIER.fullmatch(name):
        return None
    if match := _BLOCK_CONV.fullmatch(name):
        return f"{_block_name(match)}.conv_{match['branch']}.weight"
    if match := _BLOCK_BN.fullmatch(name):
        return f"{_block_name(match)}.bn_{match['branch']}.{_BN_PARAM_NAMES[match['param']]}"
    if match := _FINAL_BN.fullmatch(name):
        return f"bn7.{_BN_PARAM_NAMES[match['param']]}"
    raise ValueError(mxnet_name)


def convert_mxnet_to_torch(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict (our names, SPEC §1) of an MXNet ResNet-38 `.params` file such as the
    ImageNet `ilsvrc-cls_rna-a1_cls1000_ep-0001.params`; `linear1000` is dropped.
    The reference's entry point, without its `mxnet` dependency."""
    arrays, names = read_ndarray_list(path)
    if not names:
        raise UserError(
            f"{path} stores arrays without names, so they cannot be matched to ResNet-38 "
            "layers: save the parameters as a dict (mxnet.nd.save(path, dict))"
        )
    state_dict: dict[str, torch.Tensor] = {}
    for mxnet_name, array in zip(names, arrays):
        try:
            name = torch_parameter_name(mxnet_name)
        except ValueError:
            raise UserError(
                f"{path} has parameter {mxnet_name!r}, which is not part of ResNet-38 (SPEC §1 "
                "names such as arg:res4b3_branch2a_weight): not a ResNet-38 .params file"
            ) from None
        if name is None:
            continue
        if name in state_dict:
            raise UserError(f"{path} has two arrays for {name} (the second is {mxnet_name!r}): the file is corrupt")
        state_dict[name] = torch.from_numpy(array)
    return state_dict


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m network.mxnet_params",
        description="Convert an MXNet ResNet-38 .params file (e.g. the ImageNet weights) to a PyTorch .pth "
        "state dict, without mxnet.",
    )
    parser.add_argument("params", type=Path, help="input MXNet .params file")
    parser.add_argument("output", type=Path, help="output .pth file (written atomically)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    state_dict = convert_mxnet_to_torch(args.params)
    with atomic_path(args.output) as tmp_path:
        torch.save(state_dict, tmp_path)
    print(f"wrote {len(state_dict)} tensors to {args.output}")


if __name__ == "__main__":
    run_main(main)
