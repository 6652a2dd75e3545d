"""AffinityNet on ResNet-38 (SPEC_AFF §1): SEAM's `resnet38_aff.Net`, the network whose pixel affinities the random
walk follows.

State-dict keys are the reference's (SPEC §1's ResNet-38 names, then `f8_3`, `f8_4`, `f8_5`, `f9`), so SEAM's
released AffinityNet weights load strictly (network/weights.py) and ours load strictly into SEAM's network."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from network import narrow, resnet38d
from tool import aff

# SPEC_AFF §1: each head branch's input (a backbone feature of resnet38d.Net.forward_as_dict) and its channels,
# at width 1; a narrow network divides both by its width.
HEAD_BRANCHES = {"f8_3": ("conv4", 512, 64), "f8_4": ("conv5", 1024, 128), "f8_5": ("conv6", 4096, 256)}
FEATURE_CHANNELS = 448  # SPEC_AFF §1: f9 maps the 64 + 128 + 256 concatenated channels to 448
F9_GAIN = 4  # SPEC_AFF §1: f9's xavier_uniform_ gain


class Net(resnet38d.Net):
    """`forward(x)` -> N×D×M affinities of SPEC_AFF §1 on the stride-8 grid of x (D = 34, radius 5; smaller on a
    grid side under 11, §6.10), float32. `train()` is the reference's training behaviour, SPEC_AFF §3 (and CPN's,
    inherited): every BatchNorm in eval with frozen γ/β, conv1a, b2, b2_1, b2_2 frozen, dropout on. The head's
    widths follow the backbone's `width` (448/width features; width 1 is the reference's network)."""

    # SPEC_AFF §3: the reference's `from_scratch_layers` (lr ×10 weights; no biases).
    new_layers = ("f8_3", "f8_4", "f8_5", "f9")

    def __init__(self, width: int = 1):
        super().__init__(width)
        # SPEC_AFF §1's torch RNG order: the backbone, the head convs' default init, then the re-inits below.
        for name, (_, in_channels, out_channels) in HEAD_BRANCHES.items():
            setattr(self, name, nn.Conv2d(narrow(in_channels, width), narrow(out_channels, width), 1, bias=False))
        feature_channels = narrow(FEATURE_CHANNELS, width)
        self.f9 = nn.Conv2d(feature_channels, feature_channels, 1, bias=False)
        for name in HEAD_BRANCHES:
            nn.init.kaiming_normal_(getattr(self, name).weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=F9_GAIN)
        self._pairs: dict[tuple[tuple[int, int], torch.device], aff.PairIndex] = {}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """SPEC_AFF §1's head: elu(f9(cat(elu(f8_3(conv4)), elu(f8_4(conv5)), elu(f8_5(conv6))))),
        N×(448/width)×g_h×g_w."""
        backbone = self.forward_as_dict(x)
        branches = [F.elu(getattr(self, name)(backbone[feature])) for name, (feature, _, _) in HEAD_BRANCHES.items()]
        return F.elu(self.f9(torch.cat(branches, dim=1)))

    def pairs(self, grid: tuple[int, int], device: torch.device) -> aff.PairIndex:
        """The pair set of a g_h×g_w grid (radius `aff.network_radius`), cached per grid and device."""
        key = (tuple(grid), torch.device(device))
        if key not in self._pairs:
            self._pairs[key] = aff.pair_index(grid, aff.network_radius(grid), device)
        return self._pairs[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        # the pairs' |difference| means run in float32 whatever precision the network ran in
        return aff.pair_affinities(features.float(), self.pairs(features.shape[2:], features.device))
