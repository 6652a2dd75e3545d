"""network/weights.py: load_weights on the real CPN network. Most files here hold one constant
per key, stored as an expanded 0-d tensor (a few bytes on disk): a key loaded into the wrong
place, or not at all, shows up as the wrong constant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.errors import UserError
from network import resnet38_cls, resnet38_CPN
from network.weights import WeightsReport, load_weights
from tests.mxnet_writer import write_imagenet_ends

HEAD_LAYERS = {"fc8", "f8_3", "f8_4", "f9", "f10"}  # SPEC §2's new layers


@pytest.fixture(scope="module")
def cpn_net() -> resnet38_CPN.Net:
    return resnet38_CPN.Net()


def constant_state(shapes: dict[str, torch.Tensor], offset: float) -> dict[str, torch.Tensor]:
    """Key i holds `offset + i` everywhere, in the dtype and shape of `shapes[key]`."""
    return {
        key: torch.tensor(offset + index, dtype=like.dtype).expand(like.shape)
        for index, (key, like) in enumerate(shapes.items())
    }


def is_head(key: str) -> bool:
    return key.split(".")[0] in HEAD_LAYERS


def assert_model_holds(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    model_state = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(model_state[key], value.to(model_state[key].dtype)), key


def wrap_plain(state):
    return state


def wrap_state_dict(state):
    return {"state_dict": state}


def wrap_model_with_extras(state):
    return {"model": state, "epoch": 3, "args": {"lr": 0.01}}


def wrap_module_prefix(state):
    return {f"module.{key}": value for key, value in state.items()}


def wrap_state_dict_module_prefix(state):
    return {"state_dict": wrap_module_prefix(state)}


WRAPPERS = (wrap_plain, wrap_state_dict, wrap_model_with_extras, wrap_module_prefix, wrap_state_dict_module_prefix)


@pytest.mark.parametrize("case, wrap", list(enumerate(WRAPPERS)))
def test_pth_layouts_load_identically(tmp_path, cpn_net, case, wrap):
    # A different offset per case, so a load that changed nothing would fail.
    state = constant_state(cpn_net.state_dict(), offset=1000 * (case + 1))
    torch.save(wrap(state), tmp_path / "w.pth")
    report = load_weights(cpn_net, tmp_path / "w.pth")
    assert_model_holds(cpn_net, state)
    assert report.loaded == list(state)
    assert report.from_scratch == [] and report.unexpected == []


def test_random_full_checkpoint_round_trip(tmp_path, cpn_net):
    generator = torch.Generator().manual_seed(0)
    state = {
        key: torch.randn(value.shape, generator=generator) if value.is_floating_point() else value + 7
        for key, value in cpn_net.state_dict().items()
    }
    torch.save(state, tmp_path / "full.pth")
    load_weights(cpn_net, tmp_path / "full.pth")
    assert_model_holds(cpn_net, state)


def test_imagenet_like_file_reports_head_from_scratch(tmp_path, cpn_net):
    before = {key: value.clone() for key, value in cpn_net.state_dict().items() if is_head(key)}
    # As the reference's converted ImageNet .pth: backbone only, no BN counters, plus the classifier.
    backbone = {
        key: value
        for key, value in cpn_net.state_dict().items()
        if not is_head(key) and not key.endswith("num_batches_tracked")
    }
    state = constant_state(backbone, offset=-500)
    state["linear1000.weight"] = torch.zeros(1000, 4096)
    state["linear1000.bias"] = torch.zeros(1000)
    torch.save(state, tmp_path / "imagenet.pth")
    report = load_weights(cpn_net, tmp_path / "imagenet.pth")
    assert {key.split(".")[0] for key in report.from_scratch} == HEAD_LAYERS
    assert set(report.from_scratch) == set(before)
    assert report.unexpected == ["linear1000.weight", "linear1000.bias"]
    assert report.loaded == list(backbone)
    assert_model_holds(cpn_net, {key: value for key, value in state.items() if key in backbone})
    assert_model_holds(cpn_net, before)
    summary = report.summary()
    assert f"loaded {len(backbone)} tensors" in summary
    assert "initialised from scratch" in summary and "fc8, f8_3, f8_4, f9, f10" in summary
    assert "linear1000" in summary and "linear1000.weight" not in summary


def test_summary_groups_keys_by_layer():
    report = WeightsReport(
        path="w.pth", loaded=["a.weight"], from_scratch=["f9.weight", "f9.bias", "fc8.weight"], unexpected=[]
    )
    assert report.summary().splitlines() == [
        "loaded 1 tensors from w.pth",
        "initialised from scratch (3 tensors): f9, fc8",
    ]


def test_baseline_checkpoint_into_cpn_names_20_vs_21(tmp_path, cpn_net):
    with torch.device("meta"):
        cls_shapes = resnet38_cls.Net().state_dict()
    torch.save(constant_state(cls_shapes, offset=0), tmp_path / "cls.pth")
    before = {key: value.clone() for key, value in cpn_net.state_dict().items()}
    with pytest.raises(
        UserError,
        match="fc8.weight has shape .20, 4096, 1, 1. but the model expects .21, 4096, 1, 1.*20 vs 21.*resnet38_cls",
    ) as caught:
        load_weights(cpn_net, tmp_path / "cls.pth")
    assert str(tmp_path / "cls.pth") in str(caught.value)
    assert "--network" not in str(caught.value)  # no script takes the baseline: no flag to suggest
    assert_model_holds(cpn_net, before)  # a refused file changes nothing


def test_cpn_checkpoint_into_baseline_names_21_vs_20(tmp_path, cpn_net):
    torch.save(constant_state(cpn_net.state_dict(), offset=0), tmp_path / "cpn.pth")
    with torch.device("meta"):
        cls_net = resnet38_cls.Net()
    with pytest.raises(UserError, match="21 vs 20 outputs.*resnet38_CPN"):
        load_weights(cls_net, tmp_path / "cpn.pth")


def test_backbone_shape_mismatch_names_key_and_shapes(tmp_path, cpn_net):
    state = constant_state(cpn_net.state_dict(), offset=0)
    state["b4_3.conv_branch2a.weight"] = torch.zeros(512, 512, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(
        UserError,
        match=r"b4_3.conv_branch2a.weight has shape \(512, 512, 1, 1\) but the model "
        r"expects \(512, 512, 3, 3\)$",
    ):
        load_weights(cpn_net, tmp_path / "bad.pth")


def test_missing_backbone_tensors_are_refused(tmp_path, cpn_net):
    state = constant_state(cpn_net.state_dict(), offset=0)
    removed = [key for key in state if key.startswith("b7.") and not key.endswith("num_batches_tracked")]
    for key in removed:
        del state[key]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=f"missing {len(removed)} backbone tensors, e.g. b7.*not a ResNet-38"):
        load_weights(cpn_net, tmp_path / "partial.pth")
    torch.save({"encoder.conv1a.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not a ResNet-38 checkpoint"):
        load_weights(cpn_net, tmp_path / "other.pth")


def test_unreadable_files_are_user_errors(tmp_path, cpn_net):
    torch.save(constant_state(cpn_net.state_dict(), offset=0), tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    cases = {
        "truncated.pth": data[: len(data) // 2],
        "random.pth": np.random.default_rng(0).bytes(5000),
        "empty.pth": b"",
        "text.pth": b"hello\n",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match="not a PyTorch checkpoint") as caught:
            load_weights(cpn_net, tmp_path / name)
        assert str(tmp_path / name) in str(caught.value), name
    with pytest.raises(UserError, match="weights file not found"):
        load_weights(cpn_net, tmp_path / "absent.pth")
    with pytest.raises(UserError, match="weights file not found"):
        load_weights(cpn_net, tmp_path)


def test_non_state_dict_contents_are_user_errors(tmp_path, cpn_net):
    contents = {
        "tensor.pth": torch.zeros(3),
        "ints.pth": {"conv1a.weight": 1},
        "empty_dict.pth": {},
        "list.pth": [torch.zeros(1)],
    }
    for name, content in contents.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(UserError, match="state dict") as caught:
            load_weights(cpn_net, tmp_path / name)
        assert str(tmp_path / name) in str(caught.value)


UNPICKLED: list[str] = []


def record_unpickling(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Payload:
    """Unpickling this object would call `record_unpickling`."""

    def __reduce__(self):
        return record_unpickling, ("ran",)


def test_pickled_object_is_refused_without_unpickling(tmp_path, cpn_net):
    torch.save({"conv1a.weight": torch.zeros(1), "config": Payload()}, tmp_path / "object.pth")
    with pytest.raises(UserError, match="stores Python objects besides tensors"):
        load_weights(cpn_net, tmp_path / "object.pth")
    assert UNPICKLED == []


class TinyResNetEnds(nn.Module):
    """Just conv1a and bn7 with ResNet-38's names and shapes (SPEC §1), so an MXNet file
    can be loaded end to end without writing the full 400 MB."""

    def __init__(self):
        super().__init__()
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn7 = nn.BatchNorm2d(4096)


def test_mxnet_params_file_loads_end_to_end(tmp_path):
    path, arrays = write_imagenet_ends(tmp_path / "imagenet.params")
    model = TinyResNetEnds()
    report = load_weights(model, path)
    assert sorted(report.loaded) == ["bn7.bias", "bn7.running_mean", "bn7.running_var", "bn7.weight", "conv1a.weight"]
    assert report.from_scratch == [] and report.unexpected == []
    np.testing.assert_array_equal(model.conv1a.weight.detach().numpy(), arrays["arg:conv1a_weight"])
    np.testing.assert_array_equal(model.bn7.running_var.numpy(), arrays["aux:bn7_moving_var"])
    (tmp_path / "garbage.params").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="not an MXNet .params file"):
        load_weights(model, tmp_path / "garbage.params")
