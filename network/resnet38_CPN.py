"""The CPN network (SPEC §2): ResNet-38 + a CAM head (`fc8`, one channel per class: K = 21 for VOC,
81 for COCO) whose CAM is refined by a class-region attention (PRCM) and a pixel-affinity
propagation (PCM).

Each step of SPEC §2 is a module-level function so it can be checked alone. The refinement
(steps 2-7) runs in float32 with autocast off: it normalises, soft-maxes over thousands of
positions and divides by sums, which bf16 would visibly perturb, and it costs little next
to the backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.datasets import VOC12
from engine.kernels import resize_bilinear
from network import narrow, resnet38d

NORMALISATION_EPSILON = 1e-5  # SPEC §2 step 2: the class probability map's per-channel max normalisation
AFFINITY_EPSILON = 1e-5  # SPEC §2 step 6: PCM's feature L2 norm and affinity column sums


@torch.no_grad()
def class_probability_map(cam: torch.Tensor) -> torch.Tensor:
    """SPEC §2 step 2, N×K×h×w -> N×K×h×w in [0, 1], no gradient: per-channel max
    normalisation of relu(cam); background = 1 - max foreground; foreground values below
    the pixel's foreground max set to 0 (ties keep all)."""
    positive = F.relu(cam)
    channel_max = positive.flatten(2).amax(dim=2)[:, :, None, None] + NORMALISATION_EPSILON
    normalised = F.relu(positive - NORMALISATION_EPSILON) / channel_max
    foreground = normalised[:, 1:]
    foreground_max = foreground.amax(dim=1, keepdim=True)
    background = 1 - foreground_max
    foreground = torch.where(foreground < foreground_max, torch.zeros_like(foreground), foreground)
    return torch.cat([background, foreground], dim=1)


def class_region_context(probability: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """SPEC §2 step 4: each class's features averaged with softmax-over-positions weights of
    its probability map. (N×K×h×w, N×C×h×w) -> N×C×K×1, the layout the reference feeds f10."""
    weights = F.softmax(probability.flatten(2), dim=2)  # N×K×hw
    context = torch.matmul(weights, features.flatten(2).transpose(1, 2))  # N×K×C
    return context.transpose(1, 2).unsqueeze(3)


def reference_key_layout(keys: torch.Tensor) -> torch.Tensor:
    """SPEC §2 step 5 quirk: the reference turns the N×C×K×1 keys into N×K×C with a
    row-major `.view`, a reinterpretation of memory, NOT a transpose, so each "class" row
    mixes channels of several classes. Released weights were trained with it, so we keep it.
    `reshape` follows logical order, which is the reference's contiguous memory order."""
    n, channels, num_classes, _ = keys.shape
    return keys.reshape(n, num_classes, channels)


def prcm(context: torch.Tensor, affinity_features: torch.Tensor, f10: nn.Module) -> torch.Tensor:
    """SPEC §2 step 5 (PRCM). context N×C×K×1 (step 4), affinity_features = f9(g) N×D×h×w;
    returns per-class softmax-over-positions attention maps, N×K×h×w."""
    n, _, h, w = affinity_features.shape
    keys = reference_key_layout(F.relu(f10(context)))  # N×K×D
    # The reference scales the similarities by 21^-0.5: K^-0.5, the class count, not the key width 192.
    scale = context.shape[2] ** -0.5
    similarity = torch.matmul(keys, F.relu(affinity_features).flatten(2)) * scale  # N×K×hw
    return F.softmax(similarity, dim=2).reshape(n, -1, h, w)


def pcm(probability: torch.Tensor, affinity_features: torch.Tensor) -> torch.Tensor:
    """SPEC §2 step 6 (PCM): propagate the probability map N×K×h×w along the pixel affinity
    relu(cos(f9(g)_i, f9(g)_j)), each column normalised by its sum."""
    n, num_classes, h, w = probability.shape
    features = affinity_features.flatten(2)  # N×D×hw
    features = features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + AFFINITY_EPSILON)
    affinity = F.relu(torch.matmul(features.transpose(1, 2), features))  # N×hw×hw
    affinity = affinity / (affinity.sum(dim=1, keepdim=True) + AFFINITY_EPSILON)
    return torch.matmul(probability.flatten(2), affinity).reshape(n, num_classes, h, w)


def resize(x: torch.Tensor, size) -> torch.Tensor:
    return resize_bilinear(x, size, align_corners=True)


class Net(resnet38d.Net):
    """`forward(x)` -> (cam, cam_rv), both N×K×H×W float32 (SPEC §2); K = num_classes, background
    included (a data set's `num_classes`: 21 for VOC, 81 for COCO). The head's widths follow the backbone's
    `width`, besides the image's 3 channels in g and the K outputs."""

    new_layers = ("fc8", "f8_3", "f8_4", "f9", "f10")

    def __init__(self, num_classes: int = VOC12.num_classes, width: int = 1):
        super().__init__(width)
        conv6, conv4, conv5 = self.bn7.num_features, self.b5.bn_branch2a.num_features, self.b6.bn_branch2a.num_features
        conv4_reduced, conv5_reduced, key_channels = (narrow(channels, width) for channels in (64, 128, 192))
        self.dropout7 = nn.Dropout2d(0.5)
        self.fc8 = nn.Conv2d(conv6, num_classes, 1, bias=False)
        self.f8_3 = nn.Conv2d(conv4, conv4_reduced, 1, bias=False)
        self.f8_4 = nn.Conv2d(conv5, conv5_reduced, 1, bias=False)
        self.f9 = nn.Conv2d(3 + conv4_reduced + conv5_reduced, key_channels, 1, bias=False)
        self.f10 = nn.Conv2d(3 + conv4_reduced + conv5_reduced, key_channels, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        nn.init.xavier_uniform_(self.f10.weight, gain=4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        backbone = self.forward_as_dict(x)
        cam = self.fc8(self.dropout7(backbone["conv6"]))  # step 1
        with torch.autocast(device_type=x.device.type, enabled=False):
            cam = cam.float()
            probability = class_probability_map(cam)  # step 2
            size = cam.shape[2:]
            features = torch.cat(
                [  # step 3
                    resize(x.float(), size),
                    F.relu(self.f8_3(backbone["conv4"].detach().float())),
                    F.relu(self.f8_4(backbone["conv5"].detach().float())),
                ],
                dim=1,
            )
            # f9(g) feeds both PRCM (after relu) and PCM (without); computed once.
            affinity_features = self.f9(features)
            context = class_region_context(probability, features)  # step 4
            attention = prcm(context, affinity_features, self.f10)  # step 5
            final = pcm(probability, affinity_features) + attention * probability  # steps 6-7
            return resize(cam, x.shape[2:]), resize(final, x.shape[2:])  # step 8
