"""network/resnet38_deeplab.py against SPEC_SEG §1 and §3, and its weights through network/weights.py. The
real net (~124M parameters) is built once per module; shape-only checks use the meta device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.datasets import COCO14, VOC12
from engine.errors import UserError
from network import build_network, resnet38_CPN, resnet38_deeplab, resnet38d
from network.weights import load_weights
from tests.mxnet_writer import write_imagenet_ends
from tests.test_weights import assert_model_holds, constant_state

# SPEC_SEG §1: the head's tensors under the reference's names.
SPEC_HEAD_SHAPES = {
    "conv_fov.weight": (512, 4096, 3, 3),
    "bn_fov.weight": (512,),
    "bn_fov.bias": (512,),
    "bn_fov.running_mean": (512,),
    "bn_fov.running_var": (512,),
    "bn_fov.num_batches_tracked": (),
    "conv_fov2.weight": (512, 512, 1, 1),
    "bn_fov2.weight": (512,),
    "bn_fov2.bias": (512,),
    "bn_fov2.running_mean": (512,),
    "bn_fov2.running_var": (512,),
    "bn_fov2.num_batches_tracked": (),
    "cls_conv.weight": (21, 512, 1, 1),
    "cls_conv.bias": (21,),
}
HEAD_LAYERS = ("conv_fov", "bn_fov", "conv_fov2", "bn_fov2", "cls_conv")


@pytest.fixture(scope="module")
def deeplab() -> resnet38_deeplab.Net:
    torch.manual_seed(0)
    return resnet38_deeplab.Net()


@pytest.fixture(scope="module")
def hand_built() -> HandBuiltDeepLab:
    torch.manual_seed(0)
    return HandBuiltDeepLab().eval()


@pytest.fixture(scope="module")
def meta_deeplab() -> resnet38_deeplab.Net:
    with torch.device("meta"):
        return resnet38_deeplab.Net()


def backbone_shapes() -> dict[str, tuple[int, ...]]:
    """SPEC §1's ResNet-38 (tested against the SPEC in test_network.py), as the reference's `backbone`."""
    with torch.device("meta"):
        return {f"backbone.{key}": tuple(value.shape) for key, value in resnet38d.Net().state_dict().items()}


class HandBuiltDeepLab(nn.Module):
    """SPEC_SEG §1 written out: the reference's modules in its construction order, then its re-init loop."""

    def __init__(self, num_classes: int = 21):
        super().__init__()
        self.backbone = resnet38d.Net()
        self.conv_fov = nn.Conv2d(4096, 512, 3, 1, padding=12, dilation=12, bias=False)
        self.bn_fov = nn.BatchNorm2d(512, momentum=0.0003)
        self.conv_fov2 = nn.Conv2d(512, 512, 1, 1, padding=0, bias=False)
        self.bn_fov2 = nn.BatchNorm2d(512, momentum=0.0003)
        self.dropout1 = nn.Dropout(0.5)
        self.cls_conv = nn.Conv2d(512, num_classes, 1, 1, padding=0)
        backbone_modules = list(self.backbone.modules())
        for module in self.modules():
            if not any(module is other for other in backbone_modules) and isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        feature = F.relu(self.bn_fov(self.conv_fov(self.backbone(x))))
        feature = self.dropout1(F.relu(self.bn_fov2(self.conv_fov2(feature))))
        return F.interpolate(self.cls_conv(feature), x.shape[2:], mode="bilinear", align_corners=True)


def test_keys_and_shapes_are_the_reference_s(meta_deeplab):
    shapes = {key: tuple(value.shape) for key, value in meta_deeplab.state_dict().items()}
    assert shapes == {**backbone_shapes(), **SPEC_HEAD_SHAPES}


def test_head_layers_follow_spec(meta_deeplab):
    net = meta_deeplab
    assert (net.conv_fov.kernel_size, net.conv_fov.dilation, net.conv_fov.padding) == ((3, 3), (12, 12), (12, 12))
    assert net.conv_fov.bias is None and net.conv_fov2.bias is None and net.cls_conv.bias is not None
    assert type(net.dropout) is nn.Dropout and net.dropout.p == 0.5
    norms = [module for module in net.modules() if isinstance(module, nn.BatchNorm2d)]
    assert len(norms) == 2 + sum(key.endswith("running_mean") for key in backbone_shapes())
    assert {(norm.momentum, norm.eps, norm.affine) for norm in norms} == {(0.0003, 1e-5, True)}


def test_build_network_gives_the_data_set_s_classes():
    with torch.device("meta"):
        voc, coco = (build_network("network.resnet38_deeplab", spec) for spec in (VOC12, COCO14))
    assert type(voc) is resnet38_deeplab.Net
    assert voc.cls_conv.out_channels == 21 and coco.cls_conv.out_channels == 81


def test_init_and_rng_order_match_the_hand_built_reference(deeplab, hand_built):
    expected = hand_built.state_dict()
    for key, value in deeplab.state_dict().items():
        assert torch.equal(value, expected[key]), key
    # SPEC_SEG §1: kaiming fan_out relu, std sqrt(2 / (out·k·k)); cls_conv.bias keeps U(±1/√512); BN 1/0.
    for layer, std in (("conv_fov", 0.0208), ("conv_fov2", 0.0625), ("cls_conv", 0.309)):
        assert getattr(deeplab, layer).weight.std().item() == pytest.approx(std, rel=0.03), layer
    bias = deeplab.cls_conv.bias
    assert bias.abs().max() <= 512**-0.5 and bias.abs().min() > 0
    assert (deeplab.bn_fov.weight == 1).all() and (deeplab.bn_fov2.bias == 0).all()


def test_forward_matches_the_hand_built_reference_at_the_input_size(deeplab, hand_built):
    deeplab.eval()
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        logits = deeplab(x)
        expected = hand_built(x)
    assert logits.shape == (1, 21, 37, 45)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_train_mode_is_the_reference_s_training_behaviour(deeplab):
    """SPEC_SEG §3: BN on batch statistics with running stats r ← 0.9997·r + 0.0003·batch, dropouts on,
    every parameter trainable (conv1a and b2 too, unlike CPN's backbone)."""
    deeplab.train()
    try:
        assert all(module.training for module in deeplab.modules())
        assert all(param.requires_grad for param in deeplab.parameters())
        inputs = {}
        hook = deeplab.bn_fov.register_forward_hook(lambda module, args, output: inputs.setdefault("x", args[0]))
        before = deeplab.bn_fov.running_mean.clone(), deeplab.bn_fov.running_var.clone()
        try:
            deeplab(torch.randn(2, 3, 32, 32)).sum().backward()
        finally:
            hook.remove()
        batch = inputs["x"].detach()
        mean, var = batch.mean(dim=(0, 2, 3)), batch.var(dim=(0, 2, 3), unbiased=True)
        torch.testing.assert_close(deeplab.bn_fov.running_mean, 0.9997 * before[0] + 0.0003 * mean)
        torch.testing.assert_close(deeplab.bn_fov.running_var, 0.9997 * before[1] + 0.0003 * var)
        assert deeplab.backbone.conv1a.weight.grad.abs().sum() > 0
        assert deeplab.backbone.b2.conv_branch2a.weight.grad.abs().sum() > 0
    finally:
        deeplab.eval()
        deeplab.zero_grad(set_to_none=True)
    assert not any(module.training for module in deeplab.modules())


# ---------------------------------------------------------------- weights


def test_reference_keyed_file_loads_strictly_with_or_without_counters_and_module_prefix(tmp_path, deeplab):
    # The keys are the reference's (test_keys_and_shapes_are_the_reference_s); one constant per key.
    state = constant_state(deeplab.state_dict(), offset=10)
    counters = [key for key in state if key.endswith("num_batches_tracked")]
    variants = {
        "full": state,
        "no_counters": {key: value for key, value in state.items() if key not in counters},
        "data_parallel": {f"module.{key}": value for key, value in state.items()},
    }
    for case, (name, variant) in enumerate(variants.items()):
        shifted = constant_state(deeplab.state_dict(), offset=10 + 1000 * case)
        variant = {key: shifted[key.removeprefix("module.")] for key in variant}
        torch.save(variant, tmp_path / f"{name}.pth")
        report = load_weights(deeplab, tmp_path / f"{name}.pth")
        assert report.loaded == [key.removeprefix("module.") for key in variant], name
        assert report.from_scratch == [] and report.unexpected == [], name
        assert_model_holds(deeplab, {key: shifted[key] for key in report.loaded})


def test_our_state_dict_loads_strictly_into_the_hand_built_reference(meta_deeplab):
    with torch.device("meta"):
        reference = HandBuiltDeepLab()
    reference.load_state_dict(meta_deeplab.state_dict(), strict=True, assign=True)


def test_imagenet_pth_fills_the_backbone_and_reports_the_head(tmp_path, deeplab):
    with torch.device("meta"):
        imagenet = resnet38d.Net().state_dict()
    state = constant_state({key: value for key, value in imagenet.items() if "num_batches" not in key}, offset=3)
    torch.save(state, tmp_path / "imagenet.pth")
    head_before = {key: value.clone() for key, value in deeplab.state_dict().items() if key in SPEC_HEAD_SHAPES}
    report = load_weights(deeplab, tmp_path / "imagenet.pth")
    assert_model_holds(deeplab, {f"backbone.{key}": value for key, value in state.items()})
    assert_model_holds(deeplab, head_before)
    assert report.loaded == [f"backbone.{key}" for key in state]
    assert report.from_scratch == [key for key in SPEC_HEAD_SHAPES if not key.endswith("num_batches_tracked")]
    assert "initialised from scratch (12 tensors): conv_fov, bn_fov, conv_fov2, bn_fov2, cls_conv" in report.summary()


class TinyDeepLab(resnet38_deeplab.Net):
    """DeepLab's checkpoint layout (an instance of its Net) with a backbone of conv1a and bn7 alone, so an
    ImageNet-style .params file stays small."""

    def __init__(self):
        nn.Module.__init__(self)
        self.backbone = nn.Module()
        self.backbone.conv1a = nn.Conv2d(3, 64, 3, bias=False)
        self.backbone.bn7 = nn.BatchNorm2d(4096)
        self.cls_conv = nn.Conv2d(4096, 21, 1)


def test_imagenet_params_file_fills_the_backbone(tmp_path):
    path, arrays = write_imagenet_ends(tmp_path / "imagenet.params")
    model = TinyDeepLab()
    report = load_weights(model, path)
    assert sorted(report.loaded) == [f"backbone.bn7.{name}" for name in ("bias", "running_mean", "running_var")] + [
        "backbone.bn7.weight",
        "backbone.conv1a.weight",
    ]
    assert report.from_scratch == ["cls_conv.weight", "cls_conv.bias"] and report.unexpected == []
    np.testing.assert_array_equal(model.backbone.conv1a.weight.detach().numpy(), arrays["arg:conv1a_weight"])
    np.testing.assert_array_equal(model.backbone.bn7.running_var.numpy(), arrays["aux:bn7_moving_var"])


def test_cpn_and_irn_weights_are_refused_by_name(tmp_path, deeplab):
    with torch.device("meta"):
        cpn_state = resnet38_CPN.Net().state_dict()
    torch.save(constant_state(cpn_state, offset=0), tmp_path / "cpn.pth")
    with pytest.raises(UserError, match=r"cpn.pth holds weights of a CAM network .*\(e\.g\. fc8\..*\), not DeepLab"):
        load_weights(deeplab, tmp_path / "cpn.pth")
    irn_state = {"stage2.0.0.conv1.weight": torch.zeros(64, 64, 1, 1), "edge1.0.weight": torch.zeros(32, 64, 1, 1)}
    torch.save(irn_state, tmp_path / "irn.pth")
    with pytest.raises(UserError, match=r"irn.pth holds ResNet-50 weights \(IRN's, or torchvision's\)"):
        load_weights(deeplab, tmp_path / "irn.pth")
    torch.save({"layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "torchvision.pth")
    with pytest.raises(UserError, match="ResNet-50 weights"):
        load_weights(deeplab, tmp_path / "torchvision.pth")


def test_deeplab_weights_into_cpn_are_refused(tmp_path, meta_deeplab):
    torch.save(constant_state(meta_deeplab.state_dict(), offset=0), tmp_path / "deeplab.pth")
    with torch.device("meta"):
        cpn = resnet38_CPN.Net()
    with pytest.raises(UserError, match=r"deeplab.pth holds DeepLab weights .*not ResNet-38 weights"):
        load_weights(cpn, tmp_path / "deeplab.pth")


def test_coco_checkpoint_with_the_voc_dataset_names_the_dataset(tmp_path, deeplab):
    with torch.device("meta"):
        coco = resnet38_deeplab.Net(COCO14.num_classes)
    torch.save(constant_state(coco.state_dict(), offset=0), tmp_path / "coco.pth")
    with pytest.raises(
        UserError, match=r"cls_conv.weight has shape \(81, 512, 1, 1\) .*\(21, 512, 1, 1\).*pass --dataset coco14"
    ):
        load_weights(deeplab, tmp_path / "coco.pth")
