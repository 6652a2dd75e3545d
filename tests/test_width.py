"""The width option (network/__init__.py): width 1 is the network as it was, a narrow network keeps the layers
and shapes the heads need, its width travels with its weights file (network/weights.py), and a file of another
width is refused in one line."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

import infer_cam
import train_cpn
import train_irn
import train_seg
from engine.datasets import VOC12
from engine.errors import UserError
from engine.manifest import MANIFEST_NAME
from engine.runtime import ProcessGroup
from engine.training import save_weights
from network import build_network, resnet38d, resnet50_irn
from network.weights import load_network, load_weights, save_irn_weights, weights_width
from tests.mxnet_writer import write_imagenet_ends
from tests.tiny import TINY_TRAIN_ARGS

# Each width-1 network's state dict after torch.manual_seed(0): {network: {key: [shape, sum of the values]}},
# computed from the code before the width option (commit 7c09d2d). The sums tell another random stream or
# another initialisation order apart; the tolerance allows another CPU's float rounding.
WIDTH1_INIT = Path(__file__).with_name("width1_init.json")
NARROW = 8
ONE_PROCESS = ProcessGroup()


def narrow_network(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(name, width=NARROW)


@pytest.mark.parametrize("name", ["resnet38_CPN", "resnet38_deeplab", "resnet50_irn", "resnet38_aff"])
def test_width_1_is_the_network_before_the_width_option(name):
    expected = json.loads(WIDTH1_INIT.read_text())[name]
    torch.manual_seed(0)
    state = build_network(name).state_dict()
    assert [(key, list(value.shape)) for key, value in state.items()] == [
        (key, shape) for key, (shape, _) in expected.items()
    ]
    different = [
        key
        for key, value in state.items()
        if not math.isclose(value.double().sum().item(), expected[key][1], rel_tol=1e-5, abs_tol=1e-4)
    ]
    assert not different


def test_narrow_networks_divide_every_channel_count():
    cpn = build_network("resnet38_CPN", width=NARROW)
    assert (cpn.conv1a.out_channels, cpn.b5.bn_branch2a.num_features, cpn.bn7.num_features) == (8, 64, 512)
    assert (cpn.fc8.in_channels, cpn.fc8.out_channels) == (512, 21)  # the classes stay
    assert (cpn.f8_3.out_channels, cpn.f8_4.out_channels, cpn.f9.in_channels, cpn.f9.out_channels) == (8, 16, 27, 24)
    assert cpn.b6.dropout_2b1.p == 0.3 and cpn.b7.dropout_2b2.p == 0.5 and cpn.b5.conv_branch2b1.dilation == (2, 2)
    deeplab = build_network("resnet38_deeplab", width=NARROW)
    assert (deeplab.conv_fov.in_channels, deeplab.conv_fov.out_channels, deeplab.cls_conv.out_channels) == (512, 64, 21)
    assert deeplab.conv_fov.dilation == (12, 12)
    irn = build_network("resnet50_irn", width=NARROW)
    assert (irn.resnet50.conv1.out_channels, irn.resnet50.layer4[-1].conv3.out_channels) == (8, 256)
    assert (irn.edge_branch.e1.norm.num_channels, irn.edge_branch.e1.norm.num_groups) == (4, 4)
    assert (irn.displacement_branch.disp_features.conv.out_channels, irn.displacement_branch.disp.out_channels) == (
        32,
        2,
    )
    affinity = build_network("resnet38_aff", width=NARROW)
    layers = (affinity.f8_3, affinity.f8_4, affinity.f8_5, affinity.f9)
    head = [(layer.in_channels, layer.out_channels) for layer in layers]
    assert head == [(64, 8), (128, 16), (512, 32), (56, 56)]


@pytest.mark.parametrize(
    ("name", "output_shapes"),
    [
        ("resnet38_CPN", [(2, 21, 40, 40), (2, 21, 40, 40)]),
        ("resnet38_deeplab", [(2, 21, 40, 40)]),
        ("resnet50_irn", [(2, 1, 10, 10), (2, 2, 10, 10)]),
        ("resnet38_aff", [(2, 4, 12)]),  # a 5×5 grid: radius (5 - 1)//2 = 2 (SPEC_AFF §6.10), 4 directions
    ],
)
def test_narrow_forward_and_backward(name, output_shapes):
    model = narrow_network(name).train()
    outputs = model(torch.randn(2, 3, 40, 40))
    outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
    assert [tuple(output.shape) for output in outputs] == output_shapes
    sum(output.sum() for output in outputs).backward()
    trainable = [param for param in model.parameters() if param.requires_grad]
    assert trainable and all(param.grad is not None and param.grad.abs().sum() > 0 for param in trainable)


def test_a_width_the_channels_do_not_allow_fails_with_one_line():
    with pytest.raises(UserError, match=r"^--width 16 does not divide network.resnet50_irn's .*1, 2, 4, 8$"):
        build_network("network.resnet50_irn", width=16)
    with pytest.raises(UserError, match=r"--width 3 does not divide"):
        build_network("resnet38_CPN", width=3)
    assert resnet38d.WIDTHS == (1, 2, 4, 8, 16, 32, 64) and resnet50_irn.WIDTHS == (1, 2, 4, 8)


@pytest.mark.parametrize("name", ["resnet38_CPN", "resnet38_deeplab", "resnet50_irn", "resnet38_aff"])
def test_the_width_is_read_back_from_a_weights_file_we_wrote(name, tmp_path):
    model = narrow_network(name, seed=1)
    path = tmp_path / "narrow.pth"
    save_irn_weights(model, path) if name == "resnet50_irn" else save_weights(model, path)
    assert weights_width(name, path) == NARROW
    loaded, report = load_network(name, path)
    assert not report.from_scratch
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_narrow_network_refuses_imagenet_and_reference_weights(tmp_path):
    params, _ = write_imagenet_ends(tmp_path / "imagenet.params")
    model = build_network("resnet38_CPN", width=NARROW)
    pattern = (
        rf"^weights file {params} holds a width-1 network \(conv1a.weight has 64 output channels\), but the network "
        r"is width 8; pass --width 1 to start from it; ImageNet and the reference's weights are width 1: "
        r"a narrow network starts from --weights none$"
    )
    with pytest.raises(UserError, match=pattern):
        load_weights(model, params)
    with pytest.raises(UserError, match=pattern):
        load_weights(build_network("resnet38_aff", width=NARROW), params)
    resnet50 = tmp_path / "resnet50.pth"  # torchvision's names, width 1: only conv1 matters for the width
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, resnet50)
    with pytest.raises(UserError, match=r"holds a width-1 network \(conv1.weight has 64 output channels\)"):
        load_weights(build_network("resnet50_irn", width=NARROW), resnet50)


def test_a_file_of_another_width_is_refused_both_ways(tmp_path):
    narrow_file, wider_file = tmp_path / "narrow.pth", tmp_path / "wider.pth"
    save_weights(build_network("resnet38_deeplab", width=NARROW), narrow_file)
    save_weights(build_network("resnet38_deeplab", width=4), wider_file)
    with pytest.raises(UserError, match=r"holds a width-8 network .* but the network is width 4; pass --width 8"):
        load_weights(build_network("resnet38_deeplab", width=4), narrow_file)
    with pytest.raises(UserError, match=r"holds a width-4 network .* but the network is width 8; pass --width 4"):
        load_weights(build_network("resnet38_deeplab", width=NARROW), wider_file)


def test_trainers_refuse_width_1_starts_for_a_narrow_network(tmp_path):
    irn_args = argparse.Namespace(weights="torchvision", width=NARROW, train_backbone=False)
    with pytest.raises(UserError, match=r"^--weights torchvision is a width-1 ResNet-50; start --width 8 from"):
        train_irn.build_model(irn_args, ONE_PROCESS)
    with pytest.raises(SystemExit):
        train_seg.parse_args(["--sem_seg_out_dir", "x", "--weights", "w.pth", "--backbone_from", "cpn.pth"])


def test_deeplab_starts_from_a_cpn_file_s_backbone(tmp_path):
    cpn = narrow_network("resnet38_CPN", seed=2)
    cpn_file = save_weights(cpn, tmp_path / "cpn.pth")
    args = argparse.Namespace(weights="none", width=NARROW, backbone_from=str(cpn_file))
    deeplab = train_seg.build_model(args, VOC12, ONE_PROCESS)
    backbone = deeplab.state_dict()
    for key, value in cpn.state_dict().items():
        if not key.startswith(cpn.new_layers):
            assert torch.equal(backbone[f"backbone.{key}"], value), key
    assert deeplab.training


@pytest.mark.slow  # two scripts' runs
def test_a_narrow_cpn_run_s_weights_make_cams_without_a_width_flag(toy_voc, toy_lists, tmp_path):
    """train_cpn.py --width 8 → its weights and run record → infer_cam.py builds width 8 from the file."""
    train_cpn.main(
        [
            *("--voc12_root", str(toy_voc), "--train_list", str(toy_lists["train"])),
            *("--cls_labels", str(toy_lists["cls_labels"]), "--out_dir", str(tmp_path), "--session_name", "run"),
            *TINY_TRAIN_ARGS,
            *("--max_steps", "1", "--width", str(NARROW)),
        ]
    )
    assert json.loads((tmp_path / "run.json").read_text())["args"]["width"] == NARROW
    two_images = tmp_path / "two.txt"
    two_images.write_text("\n".join(toy_lists["train"].read_text().split()[:2]) + "\n")
    infer_cam.main(
        [
            *("--weights", str(tmp_path / "run.pth"), "--voc12_root", str(toy_voc), "--infer_list", str(two_images)),
            *("--cls_labels", str(toy_lists["cls_labels"]), "--scales", "1.0", "--num_workers", "0"),
            *("--device", "cpu", "--post_workers", "0", "--out_cam", str(tmp_path / "cam")),
        ]
    )
    assert json.loads((tmp_path / "cam" / MANIFEST_NAME).read_text())["settings"]["width"] == NARROW
    assert len(list((tmp_path / "cam").glob("*.npy"))) == 2
