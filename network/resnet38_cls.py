"""The baseline CAM network (SPEC §2, last paragraph): ResNet-38 + a linear
classifier (one output per foreground class) on the globally
pooled conv6; its CAM is that classifier applied per position."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.datasets import VOC12
from network import resnet38d


class Net(resnet38d.Net):
    """`forward(x)` -> N×F logits, `forward_cam(x)` -> N×F×h×w (stride 8); F = num_fg_classes (20 VOC, 80 COCO)."""

    new_layers = ("fc8",)

    def __init__(self, num_fg_classes: int = VOC12.num_fg_classes, width: int = 1):
        super().__init__(width)
        self.dropout7 = nn.Dropout2d(0.5)
        self.fc8 = nn.Conv2d(self.bn7.num_features, num_fg_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.dropout7(super().forward(x))
        pooled = features.mean(dim=(2, 3), keepdim=True)
        return self.fc8(pooled).flatten(1)

    def forward_cam(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.conv2d(super().forward(x), self.fc8.weight))
