"""Device mixing, caught without a GPU: each training step and inference function that can, runs with its
network on PyTorch's `meta` device and its batch on the CPU, as on CUDA the network sits on the GPU and the
loader's batches in host memory. A tensor made on the CPU inside (a constant, an index, a mask) meets the
network's outputs there and raises, as it would on CUDA."""

from __future__ import annotations

import contextlib

import pytest
import torch

import train_cpn
import train_seg
from network import build_network
from tool.cam import multiscale_cam
from tool.optim import PolyOptimizer, cpn_param_groups
from tool.seg import multiscale_probabilities, seg_optimizer

META = torch.device("meta")


@pytest.fixture(autouse=True)
def autocast_off_on_meta(monkeypatch):
    """`meta` has no autocast: the networks' `torch.autocast(..., enabled=False)` blocks become no-ops there."""
    real = torch.autocast

    def autocast(device_type, **options):
        return contextlib.nullcontext() if device_type == "meta" else real(device_type, **options)

    monkeypatch.setattr(torch, "autocast", autocast)


def on_meta(name: str) -> torch.nn.Module:
    return build_network(name).to(META)


def no_scaling() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", enabled=False)


def assert_on_meta(values: dict) -> None:
    assert {value.device for value in values.values()} == {META}


@pytest.mark.parametrize("three_pass", [False, True])
def test_the_cpn_step_keeps_to_the_models_device(three_pass):
    model = on_meta("network.resnet38_CPN").train()
    optimizer = PolyOptimizer(cpn_param_groups(model.get_parameter_groups()._asdict(), 0.01, 5e-4), lr=0.01, max_step=5)
    batch = {view: torch.randn(2, 3, 32, 32) for view in train_cpn.VIEWS}
    batch.update(label=torch.eye(20)[:2], kept_fraction=torch.rand(2), hidden_fraction=torch.rand(2))
    options = train_cpn.StepOptions(META, three_pass=three_pass)
    assert_on_meta(train_cpn.train_step(model, optimizer, no_scaling(), batch, options))


def test_the_deeplab_step_keeps_to_the_models_device():
    model = on_meta("network.resnet38_deeplab").train()
    batch = {"img": torch.randn(2, 3, 32, 32), "label": torch.randint(0, 21, (2, 32, 32))}
    losses = train_seg.train_batch(model, seg_optimizer(model), no_scaling(), batch, train_seg.StepOptions(META, 1))
    assert_on_meta(losses)


def test_cams_and_segmentation_probabilities_are_computed_on_the_models_device():
    cpn = on_meta("network.resnet38_CPN").eval()
    pair = torch.randn(2, 3, 32, 40)  # an input and its flip
    with torch.inference_mode():
        (cams,) = multiscale_cam(cpn, [pair], torch.eye(20)[3], [(32, 40)])
        probabilities = multiscale_probabilities(on_meta("network.resnet38_deeplab").eval(), [pair[0]], (32, 40))
    assert cams.device == META and cams.shape == (20, 32, 40)
    assert probabilities.device == META and probabilities.shape == (21, 32, 40)
