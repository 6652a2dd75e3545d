"""The reference's optimiser (SPEC §4): SGD with a per-step poly learning rate, and the
four parameter groups of SPEC §2 with their lr multipliers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from engine.errors import UserError

REFERENCE_MOMENTUM = 5e-4  # SPEC §4 quirk: the reference passes its weight decay where SGD expects momentum
POLY_POWER = 0.9  # SPEC §4: lr_t = lr_0 · (1 - t / T)^0.9


class GroupSetting(NamedTuple):
    lr_multiplier: int
    weight_decay_applies: bool


# SPEC §2: the setting of each parameter group a network's `get_parameter_groups()` names,
# in the order the optimiser holds them.
GROUP_SETTINGS = {
    "pretrained_weights": GroupSetting(lr_multiplier=1, weight_decay_applies=True),
    "pretrained_biases": GroupSetting(lr_multiplier=2, weight_decay_applies=False),
    "new_weights": GroupSetting(lr_multiplier=10, weight_decay_applies=True),
    "new_biases": GroupSetting(lr_multiplier=20, weight_decay_applies=False),
}


def poly_lr(initial_lr: float, step: int, max_step: int, power: float = POLY_POWER) -> float:
    """SPEC §4: the learning rate of step `step` (0-based) out of `max_step`."""
    return initial_lr * (1 - step / max_step) ** power


def cpn_param_groups(
    groups: Mapping[str, Iterable[nn.Parameter]], lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """SGD parameter groups from the parameters of each GROUP_SETTINGS name (SPEC §2):
    (lr, wd), (2·lr, 0), (10·lr, wd), (20·lr, 0), in GROUP_SETTINGS' order whatever the
    order of `groups`. An empty group is left out; the others keep their own settings."""
    assert set(groups) == set(GROUP_SETTINGS), f"expected the groups {list(GROUP_SETTINGS)}, got {list(groups)}"
    sgd_groups = []
    for name, setting in GROUP_SETTINGS.items():
        params = list(groups[name])
        if params:
            sgd_groups.append(
                {
                    "params": params,
                    "lr": setting.lr_multiplier * lr,
                    "weight_decay": weight_decay if setting.weight_decay_applies else 0.0,
                }
            )
    return sgd_groups


class PolyOptimizer(torch.optim.SGD):
    """SGD whose every group's lr is set to `poly_lr(its initial lr, global_step, max_step)`
    before each step (SPEC §4). After `max_step` steps the last lr stays, as in the reference.

    `global_step` and `max_step` travel in `state_dict()`, and each group's initial lr is
    stored in the group ("initial_lr"), so a resumed run continues the same schedule."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        max_step: int,
        *,
        momentum: float = REFERENCE_MOMENTUM,
        weight_decay: float = 0.0,
        power: float = POLY_POWER,
    ):
        assert max_step >= 1, f"max_step must be positive, got {max_step}"
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.max_step = max_step
        self.global_step = 0
        self.power = power

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self.param_groups[-1].setdefault("initial_lr", self.param_groups[-1]["lr"])

    def step(self, closure=None):
        if self.global_step < self.max_step:
            for group in self.param_groups:
                group["lr"] = poly_lr(group["initial_lr"], self.global_step, self.max_step, self.power)
        loss = super().step(closure)
        self.global_step += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["global_step"] = self.global_step
        state["max_step"] = self.max_step
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "global_step" not in state_dict or "max_step" not in state_dict:
            raise UserError(
                "optimizer state has no global_step/max_step: it was not saved by "
                "PolyOptimizer; resume from a checkpoint written by train_cpn.py"
            )
        self.global_step = state_dict.pop("global_step")
        self.max_step = state_dict.pop("max_step")
        super().load_state_dict(state_dict)


@torch.no_grad()
def estimate_batchnorm_statistics(model: nn.Module, images: torch.Tensor) -> None:
    """Set every BatchNorm's running mean/var to the statistics of `images` passed through `model`.

    Only for random starts (`--weights none`, not in the reference): training keeps BN frozen
    (SPEC §1), and with the identity statistics of a fresh BatchNorm a random ResNet-38's
    activations vanish (conv6 std ≈ 2e-3), so nothing can be learnt. Measured statistics make the
    frozen BNs normalise as they would after ImageNet training. Dropout stays off meanwhile."""
    was_training = model.training
    model.eval()
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batch
        norm.train()
    model(images)
    for norm in norms:
        norm.momentum = 0.1
    model.train(was_training)
