"""Networks, chosen by the reference's `--network` value (SPEC §2), IRN's IRNet (SPEC-IRN §1-2) and the
segmentation stage's DeepLab-v1 (SPEC_SEG §1)."""

from __future__ import annotations

import importlib

from torch import nn

from engine.datasets import VOC12, DatasetSpec
from engine.errors import UserError

NETWORKS = ("resnet38_CPN", "resnet38_cls", "resnet50_irn", "resnet38_deeplab", "resnet38_aff")


def build_network(name: str, dataset: DatasetSpec = VOC12) -> nn.Module:
    """A fresh `Net` of the named module: "network.resnet38_CPN" (the reference's form)
    or "resnet38_CPN"; likewise "network.resnet50_irn", "network.resnet38_deeplab". The CAM heads and
    DeepLab get the data set's class count (CPN and DeepLab: background included; the baseline: foreground
    only); IRNet has no class head."""
    short_name = name.removeprefix("network.")
    if short_name not in NETWORKS:
        choices = ", ".join(f"network.{choice}" for choice in NETWORKS)
        raise UserError(f"unknown network {name!r}; choose one of {choices}")
    module = importlib.import_module(f"network.{short_name}")
    if short_name in ("resnet38_CPN", "resnet38_deeplab"):
        return module.Net(dataset.num_classes)
    if short_name == "resnet38_cls":
        return module.Net(dataset.num_fg_classes)
    return module.Net()
