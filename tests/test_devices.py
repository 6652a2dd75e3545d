"""Device mixing, caught without a GPU: each training step and inference function that can, runs with its
network on PyTorch's `meta` device and its batch on the CPU, as on CUDA the network sits on the GPU and the
loader's batches in host memory. A tensor made on the CPU inside (a constant, an index, a mask) meets the
network's outputs there and raises, as it would on CUDA."""

from __future__ import annotations

import contextlib

import pytest
import torch

import train_cpn
import train_irn
import train_seg
from engine.runtime import ProcessGroup
from network import build_network
from network.resnet50_irn import boundary_probability
from tool.cam import multiscale_cam
from tool.irn import TRAIN_RADIUS, PathIndex
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


def on_meta(name: str, **options) -> torch.nn.Module:
    return build_network(name, **options).to(META)


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


@pytest.mark.parametrize("train_backbone", [False, True])
def test_the_irn_step_and_calibration_keep_to_the_models_device(train_backbone):
    model = on_meta("network.resnet50_irn", width=8, train_backbone=train_backbone).train()
    optimizer = PolyOptimizer(train_irn.irn_param_groups(model, 0.1, 1e-4), lr=0.1, max_step=5)
    # the path index is made on the device once per script, as train_irn.main makes it
    options = train_irn.StepOptions(META, PathIndex(TRAIN_RADIUS, (24, 24), META), 21)
    batch = {"img": torch.randn(2, 3, 96, 96), "label": torch.randint(0, 256, (2, 24, 24), dtype=torch.uint8)}
    assert_on_meta(train_irn.train_step(model, optimizer, no_scaling(), batch, options))
    calibration = [{"img": torch.randn(2, 3, 96, 96)}, {"img": torch.randn(2, 3, 96, 96)}]
    mean = train_irn.mean_displacement(model, calibration, 2, options, ProcessGroup())
    assert mean.device == META and mean.shape == (2,)


def test_boundary_probabilities_are_computed_on_the_models_device():
    # the image pair comes on the model's device (make_sem_seg_labels moves it); the random walk after it
    # cannot run on `meta` (torch.nonzero depends on the values)
    model = on_meta("network.resnet50_irn", width=8).eval()
    with torch.inference_mode():
        boundary = boundary_probability(model, torch.randn(2, 3, 40, 50, device=META), pad_to=64)
    assert boundary.device == META and boundary.shape == (10, 13)
