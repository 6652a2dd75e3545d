"""Networks, chosen by the reference's `--network` value (SPEC §2), IRN's IRNet (SPEC-IRN §1-2) and the
segmentation stage's DeepLab-v1 (SPEC_SEG §1), each at a width (every channel count divided by it; 1 is the
reference's network)."""

from __future__ import annotations

import argparse
import importlib

from torch import nn

from engine.datasets import VOC12, DatasetSpec
from engine.errors import UserError

NETWORKS = ("resnet38_CPN", "resnet38_cls", "resnet50_irn", "resnet38_deeplab", "resnet38_aff")
WIDTH_HELP = (
    "divide every channel count of the network by this (8: ResNet-38's 64...4096 become 8...512); 1 is the "
    "paper's network. Not in the reference: a tiny configuration for CPUs, trained from a random start "
    "(--weights none), since ImageNet weights are width 1"
)


def narrow(channels: int, width: int) -> int:
    """`channels` of the full network at `width` (one of the network's WIDTHS, which divide every count)."""
    assert channels % width == 0, (channels, width)
    return channels // width


def add_width_argument(parser: argparse.ArgumentParser) -> None:
    """A trainer's --width (an inference script reads the width from its weights file instead)."""
    parser.add_argument("--width", type=int, default=1, help=WIDTH_HELP)


def network_class(name: str) -> type[nn.Module]:
    """The `Net` class of the named module: "network.resnet38_CPN" (the reference's form) or "resnet38_CPN";
    likewise "network.resnet50_irn", "network.resnet38_deeplab"."""
    short_name = name.removeprefix("network.")
    if short_name not in NETWORKS:
        choices = ", ".join(f"network.{choice}" for choice in NETWORKS)
        raise UserError(f"unknown network {name!r}; choose one of {choices}")
    return importlib.import_module(f"network.{short_name}").Net


def build_network(name: str, dataset: DatasetSpec = VOC12, width: int = 1, **options) -> nn.Module:
    """A fresh `Net` of the named module (`network_class`). The CAM heads and DeepLab get the data set's class
    count (CPN and DeepLab: background included; the baseline: foreground only); IRNet has no class head.
    `width` divides every channel count (one of the class's `widths`); `options` go to the class as they are
    (IRNet's `train_backbone`)."""
    net_class = network_class(name)
    if width not in net_class.widths:
        choices = ", ".join(str(choice) for choice in net_class.widths)
        raise UserError(f"--width {width} does not divide {name}'s channel counts; choose one of {choices}")
    short_name = name.removeprefix("network.")
    if short_name in ("resnet38_CPN", "resnet38_deeplab"):
        return net_class(dataset.num_classes, width=width, **options)
    if short_name == "resnet38_cls":
        return net_class(dataset.num_fg_classes, width=width, **options)
    return net_class(width=width, **options)
