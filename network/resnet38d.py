"""ResNet-38 ("model A1" of Wu, Shen & van den Hengel), the backbone of every head here (SPEC §1).

Parameter names match the reference exactly (`conv1a.weight`, `b4_3.conv_branch2b1.weight`,
`bn7.running_var`, ...) so ImageNet and released CPN weights load without renaming.

`width` divides every channel count (not in the reference; the CPU demo's tiny configuration): width 8 turns
64 ... 4096 into 8 ... 512, with the same layers, strides, dilations and dropout. Width 1 is SPEC §1's network,
built in the same order, so its initialisation draws the same random numbers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# Re-exported: SPEC §1 keeps the reference's entry point, network.resnet38d.convert_mxnet_to_torch.
from network import narrow
from network.mxnet_params import convert_mxnet_to_torch  # noqa: F401


class BasicBlock(nn.Module):
    """Pre-activation basic block; `forward` also returns `relu(bn_branch2a(x))`, which
    the heads use as features (SPEC §1)."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        first_dilation: int = 1,
        dilation: int = 1,
    ):
        super().__init__()
        self.same_shape = in_channels == out_channels and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(
            in_channels, mid_channels, 3, stride, padding=first_dilation, dilation=first_dilation, bias=False
        )
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(mid_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        activated = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(activated)
        main = self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(activated))))
        return shortcut + main, activated


class BottleneckBlock(nn.Module):
    """Pre-activation bottleneck block with Dropout2d inside (SPEC §1); the shortcut
    convolution is always present. Returns `(output, relu(bn_branch2a(x)))`."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int, dropout: float):
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, out_channels // 4, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_channels // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(
            out_channels // 4, out_channels // 2, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn_branch2b2 = nn.BatchNorm2d(out_channels // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_channels // 2, out_channels, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        activated = F.relu(self.bn_branch2a(x))
        main = self.dropout_2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(activated))))
        main = self.dropout_2b2(F.relu(self.bn_branch2b2(self.conv_branch2b1(main))))
        return self.conv_branch1(activated) + self.conv_branch2b2(main), activated


class BasicStage(NamedTuple):
    """One row of SPEC §1's table for basic blocks: the first block is `name`, the
    others `name_1`, `name_2`, ...; only the first changes width and stride."""

    name: str
    num_blocks: int
    in_channels: int
    mid_channels: int
    out_channels: int
    stride: int
    first_dilation: int  # of the first block's first convolution
    dilation: int  # everywhere else in the stage


BASIC_STAGES = (
    BasicStage("b2", 3, 64, 128, 128, stride=2, first_dilation=1, dilation=1),
    BasicStage("b3", 3, 128, 256, 256, stride=2, first_dilation=1, dilation=1),
    BasicStage("b4", 6, 256, 512, 512, stride=2, first_dilation=1, dilation=1),
    BasicStage("b5", 3, 512, 512, 1024, stride=1, first_dilation=1, dilation=2),
)
# SPEC §1: (name, in, out, dilation, dropout) of the two bottleneck blocks.
BOTTLENECK_BLOCKS = (("b6", 1024, 2048, 4, 0.3), ("b7", 2048, 4096, 4, 0.5))
FIRST_CONV_CHANNELS = 64  # conv1a's output channels at width 1; a width divides it
WIDTHS = tuple(width for width in range(1, FIRST_CONV_CHANNELS + 1) if FIRST_CONV_CHANNELS % width == 0)


class ParameterGroups(NamedTuple):
    """The optimiser's four groups (SPEC §2): lr and wd multipliers 1/1, 2/0, 10/1, 20/0."""

    pretrained_weights: list[nn.Parameter]
    pretrained_biases: list[nn.Parameter]
    new_weights: list[nn.Parameter]
    new_biases: list[nn.Parameter]


class Net(nn.Module):
    """The ResNet-38 backbone: `forward(x)` -> conv6 (N×(4096/width)×h×w, stride 8)."""

    # SPEC §1: frozen in training, besides every BatchNorm.
    frozen_layers: tuple[str, ...] = ("conv1a", "b2", "b2_1", "b2_2")
    # Layers a head trains from scratch (SPEC §2's "new layers"); none in the bare backbone.
    new_layers: tuple[str, ...] = ()
    widths = WIDTHS

    def __init__(self, width: int = 1):
        super().__init__()
        assert width in self.widths, width
        self.conv1a = nn.Conv2d(3, narrow(FIRST_CONV_CHANNELS, width), 3, padding=1, bias=False)
        self.block_names: list[str] = []
        for stage in BASIC_STAGES:
            for index in range(stage.num_blocks):
                first = index == 0
                block = BasicBlock(
                    narrow(stage.in_channels if first else stage.out_channels, width),
                    narrow(stage.mid_channels, width),
                    narrow(stage.out_channels, width),
                    stride=stage.stride if first else 1,
                    first_dilation=stage.first_dilation if first else stage.dilation,
                    dilation=stage.dilation,
                )
                self._add_block(stage.name if first else f"{stage.name}_{index}", block)
        for name, in_channels, out_channels, dilation, dropout in BOTTLENECK_BLOCKS:
            block = BottleneckBlock(narrow(in_channels, width), narrow(out_channels, width), dilation, dropout)
            self._add_block(name, block)
        self.bn7 = nn.BatchNorm2d(narrow(4096, width))
        self.train()

    def _add_block(self, name: str, block: nn.Module) -> None:
        self.add_module(name, block)
        self.block_names.append(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_as_dict(x)["conv6"]

    def forward_as_dict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """conv4 = relu(bn_branch2a(·)) inside b5 (512 ch), conv5 = the same inside b6
        (1024 ch), conv6 = relu(bn7(b7 output)) (4096 ch), each divided by the width; all stride 8 (SPEC §1)."""
        features = {}
        x = self.conv1a(x)
        for name in self.block_names:
            x, activated = getattr(self, name)(x)
            if name == "b5":
                features["conv4"] = activated
            elif name == "b6":
                features["conv5"] = activated
        features["conv6"] = F.relu(self.bn7(x))
        return features

    def train(self, mode: bool = True) -> Net:
        """SPEC §1: every BatchNorm stays in eval mode with frozen affine parameters, and
        `frozen_layers` never train (also applied at construction)."""
        super().train(mode)
        for name in self.frozen_layers:
            getattr(self, name).requires_grad_(False)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
                module.requires_grad_(False)
        return self

    def freeze_backbone(self) -> Net:
        """Train the head (`new_layers`) alone: every other parameter stops learning. Not in the
        reference; an ablation (`train_cpn.py --freeze_backbone`) and the CPU demo's cheap step,
        since no gradient then flows through the backbone."""
        head = {id(param) for name in self.new_layers for param in getattr(self, name).parameters()}
        for param in self.parameters():
            if id(param) not in head:
                param.requires_grad_(False)
        return self

    def get_parameter_groups(self) -> ParameterGroups:
        """SPEC §2's groups of this net (`conv_parameter_groups`)."""
        return conv_parameter_groups(self, [getattr(self, name) for name in self.new_layers])


def conv_parameter_groups(model: nn.Module, new_modules: Iterable[nn.Module]) -> ParameterGroups:
    """Trainable convolution parameters of `model` split as SPEC §2 (and SPEC_SEG §2): pretrained vs
    `new_modules`, weights vs biases. Frozen layers and every BatchNorm are left out."""
    new_modules = set(new_modules)
    groups = ParameterGroups([], [], [], [])
    for module in model.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        is_new = module in new_modules
        if module.weight.requires_grad:
            (groups.new_weights if is_new else groups.pretrained_weights).append(module.weight)
        if module.bias is not None and module.bias.requires_grad:
            (groups.new_biases if is_new else groups.pretrained_biases).append(module.bias)
    return groups
