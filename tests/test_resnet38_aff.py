"""network/resnet38_aff.py against SPEC_AFF §1 and §3, and its weights through network/weights.py. The real net
(~106M parameters) is built once per module; its head is checked on given backbone features (the backbone is
SPEC §1's, tested in test_network.py); shape-only checks use the meta device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import UserError
from network import build_network, resnet38_aff, resnet38_CPN, resnet38_deeplab, resnet38d
from network.weights import load_weights
from tests.mxnet_writer import write_imagenet_ends
from tests.reference_aff import pairs_loop
from tests.test_weights import assert_model_holds, constant_state

# SPEC_AFF §1: the head's tensors under the reference's names, after the backbone's.
SPEC_HEAD_SHAPES = {
    "f8_3.weight": (64, 512, 1, 1),
    "f8_4.weight": (128, 1024, 1, 1),
    "f8_5.weight": (256, 4096, 1, 1),
    "f9.weight": (448, 448, 1, 1),
}
BACKBONE_FEATURES = {"conv4": 512, "conv5": 1024, "conv6": 4096}


@pytest.fixture(scope="module")
def model() -> resnet38_aff.Net:
    torch.manual_seed(0)
    return resnet38_aff.Net()


@pytest.fixture(scope="module")
def meta_model() -> resnet38_aff.Net:
    with torch.device("meta"):
        return resnet38_aff.Net()


def backbone_state() -> dict[str, torch.Tensor]:
    """SPEC §1's ResNet-38 (tested against the SPEC in test_network.py), on the meta device."""
    with torch.device("meta"):
        return resnet38d.Net().state_dict()


def backbone_shapes() -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in backbone_state().items()}


def test_keys_and_shapes_are_the_reference_s(meta_model):
    shapes = {key: tuple(value.shape) for key, value in meta_model.state_dict().items()}
    assert shapes == {**backbone_shapes(), **SPEC_HEAD_SHAPES}
    assert list(shapes) == [*backbone_shapes(), *SPEC_HEAD_SHAPES]


def test_build_network_names_it():
    with torch.device("meta"):
        assert isinstance(build_network("network.resnet38_aff"), resnet38_aff.Net)


def test_init_follows_the_spec_s_rng_order(model):
    torch.manual_seed(0)
    resnet38d.Net()
    convs = [nn.Conv2d(512, 64, 1, bias=False), nn.Conv2d(1024, 128, 1, bias=False)]
    convs += [nn.Conv2d(4096, 256, 1, bias=False), nn.Conv2d(448, 448, 1, bias=False)]
    for conv in convs[:3]:
        nn.init.kaiming_normal_(conv.weight)
    nn.init.xavier_uniform_(convs[3].weight, gain=4)
    for name, conv in zip(SPEC_HEAD_SHAPES, convs):
        assert torch.equal(model.state_dict()[name], conv.weight), name
    assert model.f9.weight.abs().max() <= 4 * (6 / 896) ** 0.5
    assert model.f8_5.weight.std().item() == pytest.approx((2 / 4096) ** 0.5, rel=0.01)


def test_forward_is_the_spec_s_head_and_affinities_on_the_grid(model, monkeypatch):
    generator = torch.Generator().manual_seed(1)
    grid = (11, 13)  # from an 88×104 input
    backbone = {
        key: torch.randn(2, channels, *grid, generator=generator) for key, channels in BACKBONE_FEATURES.items()
    }
    monkeypatch.setattr(model, "forward_as_dict", lambda x: backbone)
    with torch.no_grad():
        result = model.eval()(torch.zeros(2, 3, 88, 104))
        # SPEC_AFF §1, written out: x = elu(f9(cat(elu(f8_3(conv4)), elu(f8_4(conv5)), elu(f8_5(conv6)))))
        branches = [
            F.elu(F.conv2d(backbone[key], model.state_dict()[name])) for key, name in zip(backbone, SPEC_HEAD_SHAPES)
        ]
        features = F.elu(F.conv2d(torch.cat(branches, dim=1), model.f9.weight)).flatten(2).double()
    sources, targets = pairs_loop(grid, 5)
    assert result.shape == (2, 34, 7 * 5) and result.dtype == torch.float32
    for n in range(2):
        for d in (0, 4, 20, 33):
            for m in (0, 17, 34):
                expected = torch.exp(-(features[n, :, targets[d][m]] - features[n, :, sources[m]]).abs().mean())
                assert result[n, d, m].item() == pytest.approx(expected.item(), rel=1e-5)


def test_small_grids_shrink_the_radius(model):
    pairs = model.pairs((8, 30), torch.device("cpu"))
    assert pairs.radius == 3 and pairs.dst_indices.shape == (12, 6 * 26)
    assert model.pairs((8, 30), torch.device("cpu")) is pairs


def test_train_mode_is_the_reference_s(model):
    model.train()
    try:
        for name, module in model.named_modules():
            if isinstance(module, nn.BatchNorm2d):
                assert not module.training and not any(p.requires_grad for p in module.parameters()), name
            if isinstance(module, nn.Dropout2d):
                assert module.training, name
        convs = {name: module.weight for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
        frozen_convs = {name for name, weight in convs.items() if not weight.requires_grad}
        assert frozen_convs == {name for name in convs if name.split(".")[0] in ("conv1a", "b2", "b2_1", "b2_2")}
        assert len(frozen_convs) == 8
    finally:
        model.eval()


def test_parameter_groups_are_the_reference_s(model):
    groups = model.get_parameter_groups()
    conv_weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(conv_weights) == 43 + 4
    head = [getattr(model, name).weight for name in ("f8_3", "f8_4", "f8_5", "f9")]
    # SPEC_AFF §6.2: the reference's g0 also lists the 8 frozen weights, which SGD then skips
    frozen = {id(p) for p in conv_weights if not p.requires_grad}
    assert [id(p) for p in groups.pretrained_weights] == [
        id(p) for p in conv_weights[:43] if id(p) not in frozen
    ] and len(groups.pretrained_weights) == 35
    assert [id(p) for p in groups.new_weights] == [id(p) for p in head]
    assert groups.pretrained_biases == [] and groups.new_biases == []


# ---------------------------------------------------------------- weights


class TinyAffinityNet(resnet38_aff.Net):
    """AffinityNet's checkpoint layout (an instance of its Net) with a backbone of conv1a and bn7 alone, so files
    stay small and loads fast; the full key set is checked against the reference's above."""

    def __init__(self):
        nn.Module.__init__(self)
        self.conv1a = nn.Conv2d(3, 64, 3, bias=False)
        self.bn7 = nn.BatchNorm2d(4096)
        self.f9 = nn.Conv2d(448, 448, 1, bias=False)


def test_reference_keyed_file_loads_strictly_without_counters_or_with_the_module_prefix(tmp_path):
    model = TinyAffinityNet()
    state = constant_state(model.state_dict(), offset=10)
    torch.save({f"module.{key}": value for key, value in state.items()}, tmp_path / "resnet38_aff.pth")
    report = load_weights(model, tmp_path / "resnet38_aff.pth")
    assert report.from_scratch == [] and report.unexpected == [] and len(report.loaded) == len(state)
    assert_model_holds(model, state)
    torch.save({k: v + 1 for k, v in state.items() if "num_batches" not in k}, tmp_path / "no_counters.pth")
    assert load_weights(model, tmp_path / "no_counters.pth").from_scratch == []


def test_imagenet_pth_fills_the_backbone_and_reports_the_head(tmp_path):
    model = TinyAffinityNet()
    state = constant_state({k: v for k, v in model.state_dict().items() if k.startswith(("conv1a", "bn7"))}, 3)
    torch.save({k: v for k, v in state.items() if "num_batches" not in k}, tmp_path / "imagenet.pth")
    head_before = model.f9.weight.detach().clone()
    report = load_weights(model, tmp_path / "imagenet.pth")
    assert_model_holds(model, {k: v for k, v in state.items() if "num_batches" not in k})
    assert torch.equal(model.f9.weight, head_before)
    assert report.from_scratch == ["f9.weight"]
    assert "initialised from scratch (1 tensors): f9" in report.summary()


def test_imagenet_params_file_fills_the_backbone(tmp_path):
    path, arrays = write_imagenet_ends(tmp_path / "imagenet.params")
    model = TinyAffinityNet()
    report = load_weights(model, path)
    assert report.from_scratch == ["f9.weight"] and len(report.loaded) == 5
    assert torch.equal(model.conv1a.weight, torch.from_numpy(arrays["arg:conv1a_weight"]))


def test_cpn_deeplab_and_irn_weights_are_refused_by_name(tmp_path, model):
    with torch.device("meta"):
        files = {"cpn": resnet38_CPN.Net().state_dict(), "deeplab": resnet38_deeplab.Net().state_dict()}
    files["irn"] = {"stage2.0.0.conv1.weight": torch.zeros(64, 64, 1, 1), "edge1.0.weight": torch.zeros(32, 64, 1, 1)}
    expected = {
        "cpn": r"cpn.pth holds weights of a CAM network .*\(e\.g\. fc8\.weight\), not AffinityNet",
        "deeplab": r"deeplab.pth holds DeepLab weights",
        "irn": r"irn.pth holds ResNet-50 weights",
    }
    for name, state in files.items():
        torch.save(constant_state(state, offset=0), tmp_path / f"{name}.pth")
        with pytest.raises(UserError, match=expected[name]):
            load_weights(model, tmp_path / f"{name}.pth")


def test_affinitynet_weights_into_cpn_are_refused(tmp_path, meta_model):
    torch.save(constant_state(meta_model.state_dict(), offset=0), tmp_path / "aff.pth")
    with torch.device("meta"):
        cpn = resnet38_CPN.Net()
    with pytest.raises(UserError, match=r"aff.pth holds AffinityNet weights .*\(e\.g\. f8_5\.weight\)"):
        load_weights(cpn, tmp_path / "aff.pth")
