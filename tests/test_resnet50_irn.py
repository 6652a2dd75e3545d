"""network/resnet50_irn.py (SPEC-IRN §1-2, §7, §9) and its weights files (network/weights.py).

The oracles are written here, not taken from the product: the backbone is torchvision's ResNet-50 with
layer4's stride set to 1, and `IrnReplica` retypes IRN's `Net` (jiwoon-ahn/irn net/resnet50_irn.py) as
SPEC-IRN §2 describes it: the same modules registered under the same names (so its `state_dict()` has the
keys of IRN's files) and the same forward. Inputs are 32-96 px, so everything runs on the CPU in seconds."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from engine.errors import UserError
from network import build_network
from network.resnet50_irn import LR_MULTIPLIERS, MeanShift, Net, boundary_probability
from network.weights import load_weights, save_irn_weights

# ---------------------------------------------------------------- oracles


def torchvision_resnet50(seed: int) -> nn.Module:
    """torchvision's ResNet-50 with random BatchNorm affine parameters and statistics (their defaults,
    1/0/0/1, would hide a BatchNorm loaded into the wrong place)."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet50(weights=None)
    randomize_norms(model, seed)
    return model.eval()


def randomize_norms(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)

    def noise(like: torch.Tensor, scale: float = 0.2) -> torch.Tensor:
        return scale * torch.randn(like.shape, generator=generator)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                module.weight.copy_(1 + noise(module.weight))
                module.bias.copy_(noise(module.bias))
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(noise(module.running_mean))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
            if isinstance(module, (MeanShift, ReplicaMeanShift)):
                module.running_mean.copy_(noise(module.running_mean, scale=1.0))


def torchvision_stages(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """SPEC-IRN §1's x1..x5 of torchvision's model (in eval mode), setting layer4's stride to 1 in place."""
    model.layer4[0].conv2.stride = (1, 1)
    model.layer4[0].downsample[0].stride = (1, 1)
    x1 = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    stages = [x1]
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        stages.append(layer(stages[-1]))
    return stages


class ReplicaMeanShift(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(2))

    def forward(self, x):
        return x if self.training else x - self.running_mean.view(1, 2, 1, 1)


def irn_head_layer(in_channels: int, out_channels: int, groups: int, upsample: int | None = None) -> nn.Sequential:
    """IRN's fc_edge/fc_dp layer: Sequential(conv 1×1, GroupNorm, [Upsample,] ReLU)."""
    layers = [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.GroupNorm(groups, out_channels)]
    if upsample:
        layers.append(nn.Upsample(scale_factor=upsample, mode="bilinear", align_corners=False))
    return nn.Sequential(*layers, nn.ReLU())


class IrnReplica(nn.Module):
    """IRN's `Net`, registered in IRN's order under IRN's names: `resnet50` (torchvision's layout, no fc),
    `stage1..5`, `mean_shift`, `fc_edge1..6`, `fc_dp1..7`, then the ModuleLists `backbone`, `edge_layers`,
    `dp_layers` over the same modules. Its `EdgeDisplacement` adds no tensors."""

    def __init__(self, seed: int):
        super().__init__()
        self.resnet50 = torchvision_resnet50(seed)
        del self.resnet50.fc
        self.stage1 = nn.Sequential(self.resnet50.conv1, self.resnet50.bn1, self.resnet50.relu, self.resnet50.maxpool)
        self.stage2 = nn.Sequential(self.resnet50.layer1)
        self.stage3 = nn.Sequential(self.resnet50.layer2)
        self.stage4 = nn.Sequential(self.resnet50.layer3)
        self.stage5 = nn.Sequential(self.resnet50.layer4)
        self.mean_shift = ReplicaMeanShift()
        self.fc_edge1 = irn_head_layer(64, 32, 4)
        self.fc_edge2 = irn_head_layer(256, 32, 4)
        self.fc_edge3 = irn_head_layer(512, 32, 4, upsample=2)
        self.fc_edge4 = irn_head_layer(1024, 32, 4, upsample=4)
        self.fc_edge5 = irn_head_layer(2048, 32, 4, upsample=4)
        self.fc_edge6 = nn.Conv2d(160, 1, 1, bias=True)
        self.fc_dp1 = irn_head_layer(64, 64, 8)
        self.fc_dp2 = irn_head_layer(256, 128, 16)
        self.fc_dp3 = irn_head_layer(512, 256, 16)
        self.fc_dp4 = irn_head_layer(1024, 256, 16, upsample=2)
        self.fc_dp5 = irn_head_layer(2048, 256, 16, upsample=2)
        self.fc_dp6 = irn_head_layer(768, 256, 16, upsample=2)
        self.fc_dp7 = nn.Sequential(*irn_head_layer(448, 256, 16), nn.Conv2d(256, 2, 1, bias=False), self.mean_shift)
        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4, self.stage5])
        edge_layers = [self.fc_edge1, self.fc_edge2, self.fc_edge3, self.fc_edge4, self.fc_edge5, self.fc_edge6]
        self.edge_layers = nn.ModuleList(edge_layers)
        dp_layers = [self.fc_dp1, self.fc_dp2, self.fc_dp3, self.fc_dp4, self.fc_dp5, self.fc_dp6, self.fc_dp7]
        self.dp_layers = nn.ModuleList(dp_layers)
        self.resnet50.layer4[0].conv2.stride = (1, 1)
        self.resnet50.layer4[0].downsample[0].stride = (1, 1)
        randomize_norms(self, seed + 1)

    def forward(self, x):
        x1 = self.stage1(x)
        x2 = self.stage2(x1)
        x3 = self.stage3(x2)
        x4 = self.stage4(x3)
        x5 = self.stage5(x4)
        edge2 = self.fc_edge2(x2)
        h2, w2 = edge2.shape[2:]
        edge3 = self.fc_edge3(x3)[..., :h2, :w2]
        edge4 = self.fc_edge4(x4)[..., :h2, :w2]
        edge5 = self.fc_edge5(x5)[..., :h2, :w2]
        edge = self.fc_edge6(torch.cat([self.fc_edge1(x1), edge2, edge3, edge4, edge5], dim=1))
        dp3 = self.fc_dp3(x3)
        h3, w3 = dp3.shape[2:]
        dp4 = self.fc_dp4(x4)[..., :h3, :w3]
        dp5 = self.fc_dp5(x5)[..., :h3, :w3]
        dp_up3 = self.fc_dp6(torch.cat([dp3, dp4, dp5], dim=1))[..., :h2, :w2]
        dp = self.fc_dp7(torch.cat([self.fc_dp1(x1), self.fc_dp2(x2), dp_up3], dim=1))
        return edge, dp


@pytest.fixture(scope="module")
def replica() -> IrnReplica:
    """Read-only: tests that change a replica build their own."""
    return IrnReplica(seed=4)


def random_net(seed: int) -> Net:
    torch.manual_seed(seed)
    net = Net()
    randomize_norms(net, seed)
    return net


def assert_same_state(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def assert_same_outputs(net: Net, replica: IrnReplica, x: torch.Tensor) -> None:
    with torch.no_grad():
        for ours, reference in zip(net.eval()(x), replica.eval()(x)):
            torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())


def irn_training_file(replica: IrnReplica) -> dict[str, torch.Tensor]:
    """What IRN's train_irn.py saves: its AffinityDisplacementLoss's own buffers (path indices of the
    radius-10 search and the displacement targets, registered before any module), then `Net`'s tensors."""
    extras = {f"path_indices{index}": torch.randint(0, 1000, (index + 1, 4, 5)) for index in range(3)}
    extras["disp_target"] = torch.randn(1, 2, 30, 1)
    return {**extras, **replica.state_dict()}


def one_line(error: pytest.ExceptionInfo, path) -> str:
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


# ---------------------------------------------------------------- SPEC-IRN §1-2: shapes, freezing


def test_output_shapes_and_strides():
    net = Net().eval()
    for height, width in ((32, 32), (33, 47)):
        image = torch.randn(1, 3, height, width)
        with torch.no_grad():
            stages = net.stages(image)
            edge, displacement = net(image)
        for stage, channels, stride in zip(stages, (64, 256, 512, 1024, 2048), (4, 4, 8, 16, 16)):
            assert stage.shape == (1, channels, -(-height // stride), -(-width // stride))
        size = ((height - 1) // 4 + 1, (width - 1) // 4 + 1)
        assert edge.shape == (1, 1, *size) and displacement.shape == (1, 2, *size)


def test_build_network_names_irnet():
    assert type(build_network("network.resnet50_irn")) is Net
    assert type(build_network("resnet50_irn")) is Net


def test_backbone_frozen_in_eval_mode_heads_train():
    net = random_net(seed=0)
    backbone_before = {key: value.clone() for key, value in net.resnet50.state_dict().items()}
    for mode in (True, False, True):
        net.train(mode)
        assert all(not module.training for module in net.resnet50.modules())
        assert all(module.training == mode for module in (net.edge_branch, net.displacement_branch))
    image = torch.randn(1, 3, 40, 40)
    partner = torch.randn(1, 3, 40, 40) * 3 + 1
    alone = net.stages(image).x5
    # In training mode a batch-statistics BatchNorm would make the image's features depend on its batch.
    with_partner = net.stages(torch.cat([image, partner])).x5[:1]
    torch.testing.assert_close(alone, with_partner, rtol=1e-5, atol=1e-5)
    net.resnet50.train()  # SPEC-IRN §1: even a backbone put in training mode normalises with running statistics
    torch.testing.assert_close(net.stages(torch.cat([image, partner])).x5[:1], alone, rtol=1e-5, atol=1e-5)
    net.train()
    assert_same_state(net.resnet50, backbone_before)  # running statistics untouched

    image.requires_grad_(True)
    edge, displacement = net(image)
    (edge.sum() + displacement.sum()).backward()
    assert all(not param.requires_grad and param.grad is None for param in net.resnet50.parameters())
    assert image.grad is None  # SPEC-IRN §1: the stages are detached
    for name, param in net.named_parameters():
        if not name.startswith("resnet50."):
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name


def test_trainable_parameter_groups_are_the_two_heads():
    net = Net()
    groups = net.trainable_parameter_groups()
    assert LR_MULTIPLIERS == {"edge": 1.0, "displacement": 10.0, "backbone": 1.0}  # SPEC-IRN §7; backbone: ours
    assert set(groups) == {"edge", "displacement"}
    names = {id(param): name for name, param in net.named_parameters()}
    edge_names = [names[id(param)] for param in groups["edge"]]
    displacement_names = [names[id(param)] for param in groups["displacement"]]
    # SPEC-IRN §2: 5 conv+GN units and the edge conv with its bias; 7 conv+GN units and the disp conv.
    assert len(edge_names) == 5 * 3 + 2 and len(displacement_names) == 7 * 3 + 1
    assert all(name.startswith("edge_branch.") for name in edge_names)
    assert all(name.startswith("displacement_branch.") for name in displacement_names)
    group_norms = [name for name in edge_names + displacement_names if ".norm." in name]
    assert len(group_norms) == 2 * (5 + 7)
    trainable = {name for name, param in net.named_parameters() if param.requires_grad}
    assert trainable == set(edge_names) | set(displacement_names)  # the backbone is in no group


def test_a_backbone_that_trains_learns_and_normalises_with_batch_statistics():
    torch.manual_seed(0)
    frozen = Net(width=8)
    torch.manual_seed(0)
    net = Net(width=8, train_backbone=True)
    assert_same_state(net, frozen.state_dict())  # the same tensors, keys and initialisation
    assert set(net.trainable_parameter_groups()) == set(LR_MULTIPLIERS)
    assert net.trainable_parameter_groups()["backbone"] == list(net.resnet50.parameters())
    for mode in (False, True):
        net.train(mode)
        assert all(module.training == mode for module in net.modules())
    statistics_before = {key: value.clone() for key, value in net.resnet50.state_dict().items() if "running" in key}
    image = torch.randn(2, 3, 40, 40, requires_grad=True)
    edge, displacement = net(image)
    (edge.sum() + displacement.sum()).backward()
    assert all(param.requires_grad and param.grad is not None for param in net.resnet50.parameters())
    assert image.grad is not None  # the stages are not detached
    running = {key: value for key, value in net.resnet50.state_dict().items() if "running" in key}
    assert all(not torch.equal(running[key], value) for key, value in statistics_before.items())  # batch statistics
    net.eval()  # in eval mode a plain BatchNorm is FixedBatchNorm: the frozen network computes the same
    frozen.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(net(image)[1], frozen.eval()(image)[1], rtol=0, atol=0)


def test_mean_shift_identity_in_training_subtracts_in_eval():
    net = random_net(seed=1)
    net.displacement_branch.mean_shift.running_mean.copy_(torch.tensor([1.5, -2.0]))
    image = torch.randn(1, 3, 36, 44)
    with torch.no_grad():
        trained = net.train()(image)[1]
        evaluated = net.eval()(image)[1]
    torch.testing.assert_close(evaluated, trained - torch.tensor([1.5, -2.0]).view(1, 2, 1, 1))


# ---------------------------------------------------------------- SPEC-IRN §1: torchvision's weights


def test_torchvision_state_dict_loads_into_the_backbone(tmp_path):
    reference = torchvision_resnet50(seed=2)
    # As IRN's resnet50-19c8e357.pth: torchvision's names, fc included, no BatchNorm counters.
    state = {key: value for key, value in reference.state_dict().items() if not key.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "resnet50.pth")
    net = random_net(seed=3)
    heads_before = {key: value.clone() for key, value in net.state_dict().items() if not key.startswith("resnet50.")}
    report = load_weights(net, tmp_path / "resnet50.pth")
    assert report.unexpected == ["fc.weight", "fc.bias"]
    assert report.from_scratch == list(heads_before)
    assert report.loaded == [f"resnet50.{key}" for key in state if not key.startswith("fc.")]
    assert "initialised from scratch" in report.summary() and "edge_branch.edge" in report.summary()

    image = torch.randn(2, 3, 56, 72)
    with torch.no_grad():
        ours = net.train().stages(image)  # fixed BatchNorm: running statistics also in training mode
        expected = torchvision_stages(reference.eval(), image)
    for stage, reference_stage in zip(ours, expected):
        torch.testing.assert_close(stage, reference_stage, rtol=1e-5, atol=1e-5 * reference_stage.abs().max().item())
    assert ours.x5.shape[2:] == (4, 5)  # stride 16: layer4 kept layer3's resolution
    assert_same_state(net, {**net.state_dict(), **heads_before})


# ---------------------------------------------------------------- SPEC-IRN §2: IRN's own files


def test_irn_training_file_loads_and_computes_as_irn(tmp_path, replica):
    torch.save(irn_training_file(replica), tmp_path / "res50_irn.pth")
    net = random_net(seed=5)
    report = load_weights(net, tmp_path / "res50_irn.pth")
    assert report.from_scratch == []
    assert report.unexpected == ["path_indices0", "path_indices1", "path_indices2", "disp_target"]
    assert report.loaded == list(net.state_dict())
    assert_same_outputs(net, replica, torch.randn(2, 3, 52, 68))


def test_any_one_of_irns_names_suffices(tmp_path, replica):
    full_state = replica.state_dict()
    torch.save(full_state, tmp_path / "full.pth")
    net_from_full = random_net(seed=7)
    load_weights(net_from_full, tmp_path / "full.pth")
    # The second alias of every tensor alone: stage1..5, fc_edge*/fc_dp* (and the MeanShift inside fc_dp7).
    second_names = {key: value for key, value in full_state.items() if key.startswith(("stage", "fc_"))}
    torch.save(second_names, tmp_path / "stages.pth")
    net_from_stages = random_net(seed=8)
    assert load_weights(net_from_stages, tmp_path / "stages.pth").from_scratch == []
    assert_same_state(net_from_stages, net_from_full.state_dict())


def test_export_has_exactly_irns_keys_and_round_trips(tmp_path):
    net = random_net(seed=9)
    save_irn_weights(net, tmp_path / "exported.pth")
    exported = torch.load(tmp_path / "exported.pth", weights_only=True)
    replica = IrnReplica(seed=10)
    irn_state = replica.state_dict()
    assert sorted(exported) == sorted(irn_state)
    assert all(exported[key].shape == irn_state[key].shape for key in irn_state)
    replica.load_state_dict(exported, strict=True)  # what IRN's make_sem_seg_labels does
    assert_same_outputs(net, replica, torch.randn(1, 3, 48, 40))
    # Each tensor is stored once, though named two or three times.
    single_copy_bytes = sum(value.numel() * value.element_size() for value in net.state_dict().values())
    assert (tmp_path / "exported.pth").stat().st_size < 1.1 * single_copy_bytes

    reloaded = random_net(seed=11)
    report = load_weights(reloaded, tmp_path / "exported.pth")
    assert report.from_scratch == [] and report.unexpected == []
    assert_same_state(reloaded, net.state_dict())


# ---------------------------------------------------------------- bad files


def test_missing_backbone_tensors_are_refused(tmp_path, replica):
    net = random_net(seed=12)
    before = {key: value.clone() for key, value in net.state_dict().items()}
    state = replica.state_dict()
    without_layer4 = {
        key: value
        for key, value in state.items()
        if not key.startswith(("resnet50.layer4.", "stage5.", "backbone.4.")) or key.endswith("num_batches_tracked")
    }
    torch.save(without_layer4, tmp_path / "partial.pth")
    with pytest.raises(UserError) as caught:
        load_weights(net, tmp_path / "partial.pth")
    message = one_line(caught, tmp_path / "partial.pth")
    assert "missing 50 backbone tensors, e.g. resnet50.layer4.0.conv1.weight" in message
    assert "not a ResNet-50" in message

    torch.save({"conv1a.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "resnet38.pth")
    with pytest.raises(UserError, match="missing 265 backbone tensors.*not a ResNet-50") as caught:
        load_weights(net, tmp_path / "resnet38.pth")
    one_line(caught, tmp_path / "resnet38.pth")
    assert_same_state(net, before)  # a refused file changes nothing


@pytest.mark.parametrize(
    "names, shape, expected",
    [
        (
            ("resnet50.layer1.0.conv2.weight", "stage2.0.0.conv2.weight", "backbone.1.0.0.conv2.weight"),
            (64, 64, 1, 1),
            r"resnet50.layer1.0.conv2.weight has shape \(64, 64, 1, 1\) but the model expects \(64, 64, 3, 3\)$",
        ),
        (
            ("fc_edge6.weight", "edge_layers.5.weight"),
            (1, 128, 1, 1),
            r"fc_edge6.weight has shape \(1, 128, 1, 1\) but the model expects \(1, 160, 1, 1\)$",
        ),
    ],
)
def test_shape_mismatch_names_the_key_and_shapes(tmp_path, replica, names, shape, expected):
    state = replica.state_dict()
    for name in names:
        state[name] = torch.zeros(shape)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=expected) as caught:
        load_weights(Net(), tmp_path / "bad.pth")
    one_line(caught, tmp_path / "bad.pth")


# ---------------------------------------------------------------- SPEC-IRN §9: inference


@pytest.mark.parametrize("height, width, padded_height, padded_width", [(24, 28, 32, 32), (40, 20, 64, 32)])
def test_boundary_probability_pads_crops_and_averages_the_flip(height, width, padded_height, padded_width):
    """Padded to pad_to × pad_to, or each longer side to the next multiple of pad_to (32 here for speed)."""
    net = random_net(seed=15).eval()
    image = torch.randn(3, height, width)
    pair = torch.stack([image, image.flip(-1)])
    boundary = boundary_probability(net, pair, pad_to=32)
    size = ((height - 1) // 4 + 1, (width - 1) // 4 + 1)
    assert boundary.shape == size
    with torch.no_grad():
        canvas = torch.zeros(2, 3, padded_height, padded_width)
        canvas[:, :, :height, :width] = pair
        logits = net(canvas)[0][:, 0, : size[0], : size[1]]
        unpadded_logits = net(pair)[0][:, 0]
    torch.testing.assert_close(boundary, torch.sigmoid((logits[0] + logits[1].flip(-1)) / 2))
    # The padding matters (the test could tell it apart), and the logits are averaged before the sigmoid.
    assert not torch.allclose(boundary, torch.sigmoid((unpadded_logits[0] + unpadded_logits[1].flip(-1)) / 2))
    assert not torch.allclose(boundary, (torch.sigmoid(logits[0]) + torch.sigmoid(logits[1].flip(-1))) / 2)
