"""Networks, chosen by the reference's `--network` value (SPEC §2), and IRN's IRNet (SPEC-IRN §1-2)."""

from __future__ import annotations

import importlib

from torch import nn

from tool.errors import UserError

NETWORKS = ("resnet38_CPN", "resnet38_cls", "resnet50_irn")


def build_network(name: str) -> nn.Module:
    """A fresh `Net()` of the named module: "network.resnet38_CPN" (the reference's form)
    or "resnet38_CPN"; likewise "network.resnet50_irn"."""
    short_name = name.removeprefix("network.")
    if short_name not in NETWORKS:
        choices = ", ".join(f"network.{choice}" for choice in NETWORKS)
        raise UserError(f"unknown network {name!r}; choose one of {choices}")
    return importlib.import_module(f"network.{short_name}").Net()
