"""IRNet (SPEC-IRN §1-2): a frozen ResNet-50 at output stride 16 and two heads that learn at stride 4,
class boundaries (`edge_branch`) and a displacement field (`displacement_branch`).

Our tensors are named `resnet50.<torchvision name>` for the backbone and `edge_branch.*` /
`displacement_branch.*` for the heads. IRN's files name every tensor two or three times (SPEC-IRN §2);
`checkpoint_names` lists the names one of ours may have in a file (read by `network.weights.load_weights`)
and `irn_state_dict` writes all of IRN's names, so IRN's own scripts load our weights.

`width` divides every channel count, the backbone's and the heads' (not in IRN; the CPU demo's tiny configuration),
with the GroupNorms' group counts kept, so the width divides 8 (e1..e5 have 32 / width channels in 4 groups).
Width 1 is SPEC-IRN §1-2's network, built in the same order, so its initialisation draws the same random numbers.
`Net(train_backbone=True)` (not in IRN either) lets the backbone learn with the heads."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels import resize_bilinear
from network import narrow

STRIDE = 4  # SPEC-IRN §2: both heads' outputs
# SPEC-IRN §7: lr multiplier of each group of `Net.trainable_parameter_groups`; "backbone" exists only
# with `train_backbone` (not in IRN, whose backbone is frozen).
LR_MULTIPLIERS = {"edge": 1.0, "displacement": 10.0, "backbone": 1.0}
# SPEC-IRN §9: the reference pads each image (and its flip) to this size before the network.
INFERENCE_PAD = 512
# SPEC-IRN §1: (layer name, blocks, bottleneck width, stride of the first block). Layer4 keeps stride 1.
RESNET50_LAYERS = (("layer1", 3, 64, 1), ("layer2", 4, 128, 2), ("layer3", 6, 256, 2), ("layer4", 3, 512, 1))
BOTTLENECK_EXPANSION = 4
FIRST_CONV_CHANNELS = 64  # conv1's output channels at width 1
WIDTHS = (1, 2, 4, 8)  # the heads' 4-group GroupNorms of 32 / width channels need 32 / width >= 4


class FixedBatchNorm(nn.BatchNorm2d):
    """SPEC-IRN §1: a BatchNorm that always normalises with its running statistics, also in training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck (names conv1..3, bn1..3, downsample), the stride on the 3×3 `conv2`,
    its BatchNorms `norm_layer`s."""

    def __init__(self, in_channels: int, width: int, stride: int, norm_layer: type[nn.BatchNorm2d]):
        super().__init__()
        out_channels = width * BOTTLENECK_EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), norm_layer(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = F.relu(self.bn1(self.conv1(x)))
        main = F.relu(self.bn2(self.conv2(main)))
        main = self.bn3(self.conv3(main))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(main + shortcut)


class Stages(NamedTuple):
    """SPEC-IRN §1's stage outputs for an H×W input, s = the stride: x1 64 ch and x2 256 ch at s 4,
    x3 512 ch at s 8, x4 1024 ch and x5 2048 ch at s 16 (each divided by the width); each side is ceil(H / s)."""

    x1: torch.Tensor
    x2: torch.Tensor
    x3: torch.Tensor
    x4: torch.Tensor
    x5: torch.Tensor


class ResNet50(nn.Module):
    """SPEC-IRN §1's backbone in torchvision's layout and names, without `fc`; `forward` -> `Stages`.
    Its BatchNorms are `norm_layer`s: SPEC-IRN §1's `FixedBatchNorm`, or `nn.BatchNorm2d` for a backbone
    that trains (`Net(train_backbone=True)`); the state dict is the same."""

    def __init__(self, width: int = 1, norm_layer: type[nn.BatchNorm2d] = FixedBatchNorm):
        super().__init__()
        in_channels = narrow(FIRST_CONV_CHANNELS, width)
        self.conv1 = nn.Conv2d(3, in_channels, 7, 2, padding=3, bias=False)
        self.bn1 = norm_layer(in_channels)
        for name, num_blocks, bottleneck_width, stride in RESNET50_LAYERS:
            blocks = []
            for index in range(num_blocks):
                stride_here = stride if index == 0 else 1
                blocks.append(Bottleneck(in_channels, narrow(bottleneck_width, width), stride_here, norm_layer))
                in_channels = narrow(bottleneck_width, width) * BOTTLENECK_EXPANSION
            self.add_module(name, nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> Stages:
        x1 = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, padding=1)
        x2 = self.layer1(x1)
        x3 = self.layer2(x2)
        x4 = self.layer3(x3)
        return Stages(x1, x2, x3, x4, self.layer4(x4))


class ConvGroupNorm(nn.Module):
    """GN(groups, out)(conv 1×1 in→out without bias), SPEC-IRN §2's unit of both heads."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = nn.GroupNorm(groups, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def upsample_relu_crop(x: torch.Tensor, scale: int, like: torch.Tensor) -> torch.Tensor:
    """SPEC-IRN §2: ReLU(up×scale(x)), bilinear with align_corners=False, keeping the top-left part of
    `like`'s size (the upsampled map is at least as large: sides ceil(H / s) vs ceil(H / (s·scale))·scale)."""
    upsampled = F.relu(resize_bilinear(x, scale_factor=scale, align_corners=False))
    return upsampled[..., : like.shape[2], : like.shape[3]]


class EdgeBranch(nn.Module):
    """SPEC-IRN §2's class-boundary branch: `Stages` -> edge logits N×1×h×w (stride 4)."""

    def __init__(self, width: int = 1):
        super().__init__()
        self.e1 = ConvGroupNorm(narrow(64, width), narrow(32, width), 4)
        self.e2 = ConvGroupNorm(narrow(256, width), narrow(32, width), 4)
        self.e3 = ConvGroupNorm(narrow(512, width), narrow(32, width), 4)
        self.e4 = ConvGroupNorm(narrow(1024, width), narrow(32, width), 4)
        self.e5 = ConvGroupNorm(narrow(2048, width), narrow(32, width), 4)
        self.edge = nn.Conv2d(narrow(160, width), 1, 1, bias=True)

    def forward(self, stages: Stages) -> torch.Tensor:
        e1 = F.relu(self.e1(stages.x1))
        e2 = F.relu(self.e2(stages.x2))
        e3 = upsample_relu_crop(self.e3(stages.x3), 2, like=e2)
        e4 = upsample_relu_crop(self.e4(stages.x4), 4, like=e2)
        e5 = upsample_relu_crop(self.e5(stages.x5), 4, like=e2)
        return self.edge(torch.cat([e1, e2, e3, e4, e5], dim=1))


class MeanShift(nn.Module):
    """SPEC-IRN §2: identity in training; in eval, subtracts `running_mean` (2 values, set after training
    as SPEC-IRN §7) from a N×2×h×w displacement field."""

    def __init__(self):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(2))

    def forward(self, displacement: torch.Tensor) -> torch.Tensor:
        if self.training:
            return displacement
        return displacement - self.running_mean.view(1, 2, 1, 1)


class DisplacementBranch(nn.Module):
    """SPEC-IRN §2's displacement branch: `Stages` -> displacement N×2×h×w (stride 4)."""

    def __init__(self, width: int = 1):
        super().__init__()
        self.d1 = ConvGroupNorm(narrow(64, width), narrow(64, width), 8)
        self.d2 = ConvGroupNorm(narrow(256, width), narrow(128, width), 16)
        self.d3 = ConvGroupNorm(narrow(512, width), narrow(256, width), 16)
        self.d4 = ConvGroupNorm(narrow(1024, width), narrow(256, width), 16)
        self.d5 = ConvGroupNorm(narrow(2048, width), narrow(256, width), 16)
        self.u3 = ConvGroupNorm(narrow(768, width), narrow(256, width), 16)
        self.disp_features = ConvGroupNorm(narrow(448, width), narrow(256, width), 16)
        self.disp = nn.Conv2d(narrow(256, width), 2, 1, bias=False)
        self.mean_shift = MeanShift()

    def forward(self, stages: Stages) -> torch.Tensor:
        d1 = F.relu(self.d1(stages.x1))
        d2 = F.relu(self.d2(stages.x2))
        d3 = F.relu(self.d3(stages.x3))
        d4 = upsample_relu_crop(self.d4(stages.x4), 2, like=d3)
        d5 = upsample_relu_crop(self.d5(stages.x5), 2, like=d3)
        u3 = upsample_relu_crop(self.u3(torch.cat([d3, d4, d5], dim=1)), 2, like=d2)
        features = F.relu(self.disp_features(torch.cat([d1, d2, u3], dim=1)))
        return self.mean_shift(self.disp(features))


class Net(nn.Module):
    """IRNet (SPEC-IRN §1-2): `forward(x)` N×3×H×W -> (edge logits N×1×h×w, displacement N×2×h×w),
    h×w = ((H−1)//4+1, (W−1)//4+1) for any H, W. The backbone never learns and stays in eval mode (SPEC-IRN §1);
    with `train_backbone` (not in IRN: the CPU demo's random start, whose frozen random features find no
    boundaries) it learns like the heads, its BatchNorms plain ones that follow the mode."""

    widths = WIDTHS

    def __init__(self, width: int = 1, train_backbone: bool = False):
        super().__init__()
        assert width in self.widths, width
        self.train_backbone = train_backbone
        self.resnet50 = ResNet50(width, nn.BatchNorm2d if train_backbone else FixedBatchNorm)
        self.edge_branch = EdgeBranch(width)
        self.displacement_branch = DisplacementBranch(width)
        self.resnet50.requires_grad_(train_backbone)
        self.train()

    def stages(self, x: torch.Tensor) -> Stages:
        """The backbone's stages, detached (SPEC-IRN §1: no gradient reaches the backbone or the input)
        unless the backbone trains."""
        stages = self.resnet50(x)
        return stages if self.train_backbone else Stages._make(stage.detach() for stage in stages)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stages = self.stages(x)
        return self.edge_branch(stages), self.displacement_branch(stages)

    def train(self, mode: bool = True) -> Net:
        """SPEC-IRN §1: the heads follow `mode`, the backbone stays in eval mode (unless it trains)."""
        super().train(mode)
        if not self.train_backbone:
            self.resnet50.eval()
        return self

    def trainable_parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters that learn by group name, keys of `LR_MULTIPLIERS`: the heads' (SPEC-IRN §7), and
        the backbone's if it trains."""
        groups = {
            "edge": list(self.edge_branch.parameters()),
            "displacement": list(self.displacement_branch.parameters()),
        }
        if self.train_backbone:
            groups["backbone"] = list(self.resnet50.parameters())
        return groups


@torch.no_grad()
def boundary_probability(model: Net, image_pair: torch.Tensor, pad_to: int = INFERENCE_PAD) -> torch.Tensor:
    """SPEC-IRN §9: class-boundary probabilities h×w in 0..1 of an image, from `image_pair` 2×3×H×W (the
    normalised image and its horizontal flip): padded right/bottom with zeros to pad_to × pad_to, run,
    edge logits cropped to h×w, sigmoid(edge[0]/2 + flip(edge[1])/2). A side longer than `pad_to` is padded
    to the next multiple of `pad_to`, where the reference fails (VOC's images are at most 500 px)."""
    assert image_pair.ndim == 4 and image_pair.shape[:2] == (2, 3), image_pair.shape
    height, width = image_pair.shape[2:]
    padded_height, padded_width = (-(-side // pad_to) * pad_to for side in (height, width))
    padded = F.pad(image_pair, (0, padded_width - width, 0, padded_height - height))
    out_height, out_width = (height - 1) // STRIDE + 1, (width - 1) // STRIDE + 1
    edge_logits = model.edge_branch(model.stages(padded))[:, 0, :out_height, :out_width]
    return torch.sigmoid(edge_logits[0] / 2 + edge_logits[1].flip(-1) / 2)


def _irn_module_names() -> dict[str, tuple[str, ...]]:
    """{our module: the names IRN's `Net` registers it under}, read from jiwoon-ahn/irn net/resnet50_irn.py
    `Net.__init__`: the backbone as `resnet50`, as `stage1` = Sequential(conv1, bn1, relu, maxpool),
    `stage2..5` = Sequential(layer1..4), and the ModuleList `backbone` of the stages; head layer k as
    `fc_edgek` / `fc_dpk` = Sequential(conv, GroupNorm[, Upsample], ReLU) and as item k-1 of the ModuleLists
    `edge_layers` / `dp_layers`; `fc_edge6` a bare conv; `fc_dp7` = Sequential(conv, GN, ReLU, conv, MeanShift),
    whose MeanShift is also `mean_shift`."""
    names = {
        "resnet50.conv1": ("resnet50.conv1", "stage1.0", "backbone.0.0"),
        "resnet50.bn1": ("resnet50.bn1", "stage1.1", "backbone.0.1"),
    }
    for index, (layer, *_) in enumerate(RESNET50_LAYERS, start=1):
        names[f"resnet50.{layer}"] = (f"resnet50.{layer}", f"stage{index + 1}.0", f"backbone.{index}.0")
    edge_units = ("e1", "e2", "e3", "e4", "e5")
    displacement_units = ("d1", "d2", "d3", "d4", "d5", "u3", "disp_features")
    for branch, units, irn_layer, irn_list in (
        ("edge_branch", edge_units, "fc_edge", "edge_layers"),
        ("displacement_branch", displacement_units, "fc_dp", "dp_layers"),
    ):
        for position, unit in enumerate(units):
            for part, irn_index in (("conv", 0), ("norm", 1)):
                names[f"{branch}.{unit}.{part}"] = (
                    f"{irn_layer}{position + 1}.{irn_index}",
                    f"{irn_list}.{position}.{irn_index}",
                )
    names["edge_branch.edge"] = ("fc_edge6", "edge_layers.5")
    names["displacement_branch.disp"] = ("fc_dp7.3", "dp_layers.6.3")
    names["displacement_branch.mean_shift"] = ("mean_shift", "fc_dp7.4", "dp_layers.6.4")
    return names


IRN_MODULE_NAMES = _irn_module_names()


def irn_names(key: str) -> tuple[str, ...]:
    """Every name of our state-dict key `key` in IRN's state dict, e.g. "resnet50.layer1.0.conv1.weight" ->
    ("resnet50.layer1.0.conv1.weight", "stage2.0.0.conv1.weight", "backbone.1.0.0.conv1.weight")."""
    module = next(module for module in IRN_MODULE_NAMES if key.startswith(f"{module}."))
    return tuple(irn_module + key.removeprefix(module) for irn_module in IRN_MODULE_NAMES[module])


def checkpoint_names(key: str) -> tuple[str, ...]:
    """The names our state-dict key may have in a weights file, preferred first: ours, torchvision's
    for a backbone tensor (without `resnet50.`), then IRN's (`irn_names`)."""
    torchvision_name = (key.removeprefix("resnet50."),) if key.startswith("resnet50.") else ()
    return tuple(dict.fromkeys((key, *torchvision_name, *irn_names(key))))


def irn_state_dict(model: Net) -> dict[str, torch.Tensor]:
    """`model`'s tensors under exactly the keys of IRN's `EdgeDisplacement` state dict (its `Net`'s), so
    IRN's make_sem_seg_labels.py loads them; the aliases share storage, which torch.save writes once."""
    return {name: value for key, value in model.state_dict().items() for name in irn_names(key)}
