"""network/mxnet_params.py against files written independently from SPEC §1 (tests/mxnet_writer.py)
and against hand-assembled bytes."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import UserError
from network import resnet38d
from network.mxnet_params import convert_mxnet_to_torch, read_ndarray_list, torch_parameter_name
from tests.mxnet_writer import HEADERS, array_bytes, ndarray_list_bytes, write_ndarray_list

REPO_ROOT = Path(__file__).resolve().parents[1]
DTYPES = (np.float32, np.float64, np.float16, np.uint8, np.int32, np.int8, np.int64)


def sample_arrays(dtype, seed: int = 0) -> list[np.ndarray]:
    """A 1-d, an empty (ndim 0) and a 4-d array, with values spanning the dtype."""
    rng = np.random.default_rng(seed)

    def values(shape: tuple[int, ...]) -> np.ndarray:
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        return (rng.standard_normal(shape) * 100).astype(dtype)

    return [values((5,)), np.zeros((), dtype), values((2, 3, 1, 4))]


def assert_read_back(read: list[np.ndarray], written: list[np.ndarray]) -> None:
    assert len(read) == len(written)
    for got, want in zip(read, written):
        if want.ndim == 0:
            # SPEC §1: ndim 0 is MXNet's empty array; no data is stored.
            assert got.shape == (0,) and got.dtype == np.float32
        else:
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("header", HEADERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_names", [True, False])
def test_round_trip_each_header_and_dtype(tmp_path, header, dtype, with_names):
    arrays = sample_arrays(dtype)
    names = ["arg:first", "aux:empty", "arg:fourd"] if with_names else None
    path = write_ndarray_list(tmp_path / "x.params", arrays, names, headers=header)
    read, read_names = read_ndarray_list(path)
    assert_read_back(read, arrays)
    assert read_names == (names or [])
    assert all(array.flags.writeable for array in read)  # torch.from_numpy needs writable memory


def test_mixed_headers_in_one_file(tmp_path):
    arrays = sample_arrays(np.float32, seed=1) + sample_arrays(np.int64, seed=2)
    headers = ["legacy", "v1", "v2", "v2", "legacy", "v1"]
    read, names = read_ndarray_list(write_ndarray_list(tmp_path / "x.params", arrays, headers=headers))
    assert_read_back(read, arrays)
    assert names == []


def test_hand_assembled_legacy_file(tmp_path):
    """Bytes typed in from SPEC §1, independent of both writer and reader."""
    data = (
        bytes.fromhex(
            "1201000000000000"
            "0000000000000000"
            "0100000000000000"  # magic, reserved, 1 array
            "02000000"
            "02000000"
            "03000000"  # legacy: ndim 2, dims 2, 3
            "01000000"
            "00000000"
            "00000000"  # cpu(0), float32
            "0000803f"
            "00000040"
            "00004040"
            "000080bf"
            "00000000"
            "0000c03f"
            "0100000000000000"
            "0500000000000000"
        )
        + b"arg:w"
    )
    path = tmp_path / "hand.params"
    path.write_bytes(data)
    arrays, names = read_ndarray_list(path)
    np.testing.assert_array_equal(arrays[0], np.array([[1, 2, 3], [-1, 0, 1.5]], np.float32))
    assert names == ["arg:w"]


def test_sparse_storage_is_refused(tmp_path):
    path = write_ndarray_list(tmp_path / "sparse.params", [np.ones(3, np.float32)], ["arg:w"], storage_type=1)
    with pytest.raises(UserError, match="sparse.params: array 0 uses sparse storage"):
        read_ndarray_list(path)


def test_every_truncation_is_a_user_error(tmp_path):
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(4, dtype=np.int8)]
    headers = ["legacy", "v2"]
    data = ndarray_list_bytes(arrays, ["arg:a", "arg:b"], headers=headers)
    start_of_array_1 = 24 + len(array_bytes(arrays[0], "legacy"))
    start_of_names = start_of_array_1 + len(array_bytes(arrays[1], "v2"))
    path = tmp_path / "cut.params"
    for length in range(len(data)):
        path.write_bytes(data[:length])
        if length < 16:
            expected = "is not an MXNet .params file"
        elif length < start_of_array_1:
            expected = "truncated at array 0"
        elif length < start_of_names:
            expected = "truncated at array 1"
        else:
            expected = "truncated in its list of names"
        with pytest.raises(UserError, match=expected) as caught:
            read_ndarray_list(path)
        assert str(path) in str(caught.value)


def test_garbage_files_are_user_errors(tmp_path):
    random_bytes = tmp_path / "random.params"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UserError, match="not an MXNet .params file"):
        read_ndarray_list(random_bytes)
    # Right magic, then a header that is neither v1/v2 nor a plausible legacy ndim.
    bad_header = tmp_path / "bad_header.params"
    bad_header.write_bytes(struct.pack("<QQQI", 0x112, 0, 1, 0xF993FACA) + bytes(64))
    with pytest.raises(UserError, match="array 0 has an unknown header"):
        read_ndarray_list(bad_header)
    # A legacy shape claiming far more data than the file holds.
    huge = tmp_path / "huge.params"
    huge.write_bytes(struct.pack("<QQQIIIiii", 0x112, 0, 1, 2, 100000, 100000, 1, 0, 0) + bytes(64))
    with pytest.raises(UserError, match="truncated at array 0"):
        read_ndarray_list(huge)
    bad_dtype = tmp_path / "bad_dtype.params"
    bad_dtype.write_bytes(struct.pack("<QQQIIiii", 0x112, 0, 1, 1, 1, 1, 0, 12) + bytes(8))
    with pytest.raises(UserError, match="unknown dtype flag 12"):
        read_ndarray_list(bad_dtype)
    with pytest.raises(UserError, match="not found"):
        read_ndarray_list(tmp_path / "absent.params")


# SPEC §1's own examples of the name mapping, plus the other parameter kinds.
SPEC_EXAMPLES = {
    "res2a_branch1": "b2.conv_branch1.weight",
    "res4b3_branch2b1": "b4_3.conv_branch2b1.weight",
    "arg:res4b3_branch2a_weight": "b4_3.conv_branch2a.weight",
    "bn5b1_branch2a_beta": "b5_1.bn_branch2a.bias",
    "arg:bn4b3_branch2a_gamma": "b4_3.bn_branch2a.weight",
    "aux:bn4b3_branch2a_moving_mean": "b4_3.bn_branch2a.running_mean",
    "aux:bn6a_branch2b2_moving_var": "b6.bn_branch2b2.running_var",
    "arg:res7a_branch2b2_weight": "b7.conv_branch2b2.weight",
    "conv1a": "conv1a.weight",
    "arg:conv1a_weight": "conv1a.weight",
    "aux:bn7_moving_var": "bn7.running_var",
    "arg:bn7_beta": "bn7.bias",
    "res4b12_branch2a": "b4_12.conv_branch2a.weight",  # the `bK` rule beyond one digit
}


@pytest.mark.parametrize("mxnet_name, torch_name", SPEC_EXAMPLES.items())
def test_spec_name_examples(mxnet_name, torch_name):
    assert torch_parameter_name(mxnet_name) == torch_name


@pytest.mark.parametrize("mxnet_name", ["linear1000", "arg:linear1000_weight", "arg:linear1000_bias"])
def test_imagenet_classifier_is_dropped(mxnet_name):
    assert torch_parameter_name(mxnet_name) is None


@pytest.mark.parametrize(
    "mxnet_name",
    [
        "fc8_weight",
        "res4c_branch2a_weight",
        "res4b3_branch3_weight",
        "bn4b3_branch2a_weight",
        "bn7_mean",
        "res8a_branch1",
        "arg:conv1b_weight",
        "res4b0_branch2a",
        "xarg:conv1a_weight",
    ],
)
def test_unknown_names_are_refused(mxnet_name):
    with pytest.raises(ValueError):
        torch_parameter_name(mxnet_name)


def spec_resnet38_names() -> list[tuple[str, str]]:
    """(MXNet name, our name) for the ImageNet ResNet-38 file, built from SPEC §1's table:
    block counts per stage, branch1 where the shape changes, the bottleneck's extra branch."""
    stages = {2: 3, 3: 3, 4: 6, 5: 3, 6: 1, 7: 1}
    bn_params = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}
    pairs = [("arg:conv1a_weight", "conv1a.weight")]
    for stage, count in stages.items():
        for index in range(count):
            letter, block = ("a", f"b{stage}") if index == 0 else (f"b{index}", f"b{stage}_{index}")
            branches = ["branch2a", "branch2b1"] + (["branch2b2"] if stage >= 6 else [])
            convs = (["branch1"] if index == 0 else []) + branches
            for branch in convs:
                pairs.append((f"arg:res{stage}{letter}_{branch}_weight", f"{block}.conv_{branch}.weight"))
            for branch in branches:
                for mxnet_param, torch_param in bn_params.items():
                    prefix = "aux" if mxnet_param.startswith("moving") else "arg"
                    pairs.append(
                        (f"{prefix}:bn{stage}{letter}_{branch}_{mxnet_param}", f"{block}.bn_{branch}.{torch_param}")
                    )
    for mxnet_param, torch_param in bn_params.items():
        prefix = "aux" if mxnet_param.startswith("moving") else "arg"
        pairs.append((f"{prefix}:bn7_{mxnet_param}", f"bn7.{torch_param}"))
    return pairs


@pytest.fixture(scope="module")
def backbone_keys() -> set[str]:
    """The backbone's state-dict keys, built on the meta device (no memory). BatchNorm's
    `num_batches_tracked` is not in MXNet files; load_weights treats it as optional."""
    with torch.device("meta"):
        keys = resnet38d.Net().state_dict().keys()
    return {key for key in keys if not key.endswith(".num_batches_tracked")}


def test_full_resnet38_name_list_maps_onto_the_backbone(tmp_path, backbone_keys):
    pairs = spec_resnet38_names()
    mxnet_names = [mxnet for mxnet, _ in pairs] + ["arg:linear1000_weight", "arg:linear1000_bias"]
    # One distinct value per array, so a name mapped to the wrong key shows up.
    arrays = [np.full((1,), index, np.float32) for index in range(len(mxnet_names))]
    path = write_ndarray_list(tmp_path / "imagenet.params", arrays, mxnet_names, headers="legacy")
    state_dict = convert_mxnet_to_torch(path)
    assert set(state_dict) == backbone_keys
    assert len(state_dict) == len(pairs)
    for index, (_, torch_name) in enumerate(pairs):
        assert state_dict[torch_name].item() == index
    assert resnet38d.convert_mxnet_to_torch(path).keys() == state_dict.keys()


def test_convert_keeps_values_and_dtypes(tmp_path):
    weight = np.random.default_rng(3).standard_normal((64, 3, 3, 3)).astype(np.float16)
    mean = np.linspace(-1, 1, 4096)
    path = write_ndarray_list(tmp_path / "w.params", [weight, mean], ["arg:conv1a_weight", "aux:bn7_moving_mean"])
    state_dict = convert_mxnet_to_torch(path)
    assert state_dict["conv1a.weight"].dtype == torch.float16
    np.testing.assert_array_equal(state_dict["conv1a.weight"].numpy(), weight)
    np.testing.assert_array_equal(state_dict["bn7.running_mean"].numpy(), mean)


def test_convert_refuses_unknown_duplicate_and_unnamed(tmp_path):
    one = [np.ones(2, np.float32)]
    with pytest.raises(UserError, match="'arg:fc8_weight', which is not part of ResNet-38"):
        convert_mxnet_to_torch(write_ndarray_list(tmp_path / "a.params", one, ["arg:fc8_weight"]))
    with pytest.raises(UserError, match="two arrays for conv1a.weight"):
        convert_mxnet_to_torch(write_ndarray_list(tmp_path / "b.params", one * 2, ["conv1a", "arg:conv1a_weight"]))
    with pytest.raises(UserError, match="without names"):
        convert_mxnet_to_torch(write_ndarray_list(tmp_path / "c.params", one))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "network.mxnet_params", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # the script in a new process
def test_cli_converts_a_file(tmp_path):
    gamma = np.arange(4096, dtype=np.float32)
    weight = np.ones((64, 3, 3, 3), np.float32)
    source = write_ndarray_list(
        tmp_path / "in.params",
        [weight, gamma, np.ones(3, np.float32)],
        ["arg:conv1a_weight", "arg:bn7_gamma", "arg:linear1000_bias"],
        headers="legacy",
    )
    output = tmp_path / "sub" / "out.pth"
    result = run_cli(str(source), str(output))
    assert result.returncode == 0, result.stderr
    assert "2 tensors" in result.stdout
    loaded = torch.load(output, map_location="cpu", weights_only=True)
    assert set(loaded) == {"conv1a.weight", "bn7.weight"}
    np.testing.assert_array_equal(loaded["bn7.weight"].numpy(), gamma)
    assert [path.name for path in output.parent.iterdir()] == ["out.pth"]  # no temp file left


@pytest.mark.slow  # the script in a new process
def test_cli_error_is_one_line(tmp_path):
    result = run_cli(str(tmp_path / "absent.params"), str(tmp_path / "out.pth"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: MXNet .params file not found: {tmp_path / 'absent.params'}"]
    assert not (tmp_path / "out.pth").exists()
