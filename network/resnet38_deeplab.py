"""DeepLab-v1 on ResNet-38 (SPEC_SEG §1): the segmentation network retrained on the pseudo masks, as the
reference's `deeplabv1` with its `resnet38` backbone builds it.

State-dict keys are the reference's (`backbone.conv1a.weight`, `backbone.b4_3.bn_branch2a.running_var`, ...,
`conv_fov`, `bn_fov`, `conv_fov2`, `bn_fov2`, `cls_conv`), so its released and trained files load strictly
(network/weights.py) and ours load strictly into it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.datasets import VOC12
from engine.kernels import resize_bilinear
from network import narrow, resnet38d

BN_MOMENTUM = 0.0003  # SPEC_SEG §1: every BatchNorm of the DeepLab net, backbone and head
FOV_CHANNELS = 512
FOV_DILATION = 12  # SPEC_SEG §1: conv_fov is 3×3, dilation 12, padding 12
HEAD_DROPOUT = 0.5  # element-wise nn.Dropout, not Dropout2d


class Backbone(resnet38d.Net):
    """SPEC §1's ResNet-38 as the DeepLab stage trains it (SPEC_SEG §3, §5.5): every BatchNorm with momentum
    0.0003, and `train()` freezes nothing. The reference's backbone overrides `train` as CPN's does, but nothing
    in its training calls `train()`, so its BNs normalise with batch statistics and conv1a and b2 learn."""

    frozen_layers = ()

    def __init__(self, width: int = 1):
        super().__init__(width)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = BN_MOMENTUM

    def train(self, mode: bool = True) -> Backbone:
        return nn.Module.train(self, mode)


class Net(nn.Module):
    """`forward(x)` -> N×K×H×W logits at the input's size (SPEC_SEG §1); K = num_classes, background included
    (21 for VOC, 81 for COCO). `train()` is the reference's training behaviour: BN on batch statistics,
    dropouts on, every convolution trainable (SPEC_SEG §3). The head's width follows the backbone's `width`."""

    # SPEC_SEG §2: the reference's `from_scratch_layers` (lr ×10 weights, ×20 biases).
    new_layers = ("conv_fov", "conv_fov2", "cls_conv")
    widths = resnet38d.WIDTHS

    def __init__(self, num_classes: int = VOC12.num_classes, width: int = 1):
        super().__init__()
        # SPEC_SEG §1's torch RNG order: the backbone's default init, then the head's, then the head's re-init.
        self.backbone = Backbone(width)
        conv6_channels = self.backbone.bn7.num_features  # 4096 at width 1: only conv6 is used (SPEC_SEG §1)
        fov_channels = narrow(FOV_CHANNELS, width)
        self.conv_fov = nn.Conv2d(
            conv6_channels, fov_channels, 3, padding=FOV_DILATION, dilation=FOV_DILATION, bias=False
        )
        self.bn_fov = nn.BatchNorm2d(fov_channels, momentum=BN_MOMENTUM)
        self.conv_fov2 = nn.Conv2d(fov_channels, fov_channels, 1, bias=False)
        self.bn_fov2 = nn.BatchNorm2d(fov_channels, momentum=BN_MOMENTUM)
        self.dropout = nn.Dropout(HEAD_DROPOUT)
        self.cls_conv = nn.Conv2d(fov_channels, num_classes, 1)
        # SPEC_SEG §1: head convolutions re-drawn in module order; cls_conv.bias keeps PyTorch's U(±1/√512)
        # and the BNs PyTorch's 1/0, which the reference sets again.
        for name in self.new_layers:
            nn.init.kaiming_normal_(getattr(self, name).weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = F.relu(self.bn_fov(self.conv_fov(self.backbone(x))))
        features = self.dropout(F.relu(self.bn_fov2(self.conv_fov2(features))))
        logits = self.cls_conv(features)
        return resize_bilinear(logits, x.shape[2:], align_corners=True)

    def get_parameter_groups(self) -> resnet38d.ParameterGroups:
        """SPEC_SEG §2: every convolution, backbone ones pretrained, `new_layers` new; no BatchNorm parameter."""
        return resnet38d.conv_parameter_groups(self, [getattr(self, name) for name in self.new_layers])
