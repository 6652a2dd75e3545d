"""tool/seg.py against SPEC_SEG §2-4: parameter groups on the real DeepLab (meta device), the schedule, ghost
BN, the loss normalisation and the test-time pipeline on a tiny network, against slow versions."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from network import resnet38_deeplab, resnet38d
from tool.constants import IMAGENET_MEAN, IMAGENET_STD
from tool.seg import (
    forward_in_bn_groups,
    img_denorm,
    multiscale_probabilities,
    parameters_left_out,
    running_statistics_frozen,
    seg_loss,
    seg_normalize,
    seg_optimizer,
    seg_param_groups,
    valid_pixel_count,
)

LR, WEIGHT_DECAY = 0.001, 5e-4


class TinySegNet(nn.Module):
    """Conv → BN → ReLU → 1×1 classifier at stride 2, resized back to the input size like DeepLab."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4, momentum=0.3)
        self.cls = nn.Conv2d(4, num_classes, 1)

    def forward(self, x):
        logits = self.cls(F.relu(self.bn(self.conv(x))))
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)

    def get_parameter_groups(self) -> resnet38d.ParameterGroups:
        return resnet38d.conv_parameter_groups(self, [self.cls])


@pytest.fixture(scope="module")
def meta_deeplab() -> resnet38_deeplab.Net:
    with torch.device("meta"):
        return resnet38_deeplab.Net()


# ---------------------------------------------------------------- SPEC_SEG §2: groups and schedule


def test_parameter_groups_are_spec_seg_s_four_without_batchnorm(meta_deeplab):
    names = {id(param): name for name, param in meta_deeplab.named_parameters()}
    groups = seg_param_groups(meta_deeplab, LR, WEIGHT_DECAY)
    # Written from SPEC_SEG §2: every backbone conv weight incl. conv1a; g1 (other biases) empty, left out.
    backbone_convs = [
        name for name in names.values() if name.startswith("backbone.") and name.split(".")[-2].startswith("conv")
    ]
    # conv1a, two per basic block (15), the 4 stages' first shortcuts, four per bottleneck block (2).
    assert "backbone.conv1a.weight" in backbone_convs and len(backbone_convs) == 1 + 2 * 15 + 4 + 4 * 2
    expected = [
        (backbone_convs, LR, WEIGHT_DECAY),
        (["conv_fov.weight", "conv_fov2.weight", "cls_conv.weight"], 10 * LR, WEIGHT_DECAY),
        (["cls_conv.bias"], 20 * LR, 0.0),
    ]
    assert [[names[id(param)] for param in group["params"]] for group in groups] == [keys for keys, _, _ in expected]
    settings = [setting for group in groups for setting in (group["lr"], group["weight_decay"])]
    assert settings == pytest.approx([setting for _, *group_settings in expected for setting in group_settings])
    # The quirk: no BatchNorm weight or bias in any group, and nothing else left out.
    bn_parameters = [name for name in names.values() if name.split(".")[-2].startswith("bn")]
    assert len(bn_parameters) == 2 * (2 * 15 + 3 * 2 + 1 + 2)  # γ and β of the blocks' BNs, bn7, bn_fov, bn_fov2
    assert parameters_left_out(meta_deeplab, groups) == bn_parameters


@pytest.mark.parametrize("step", [0, 1, 9999, 19999])
def test_poly_schedule_is_the_reference_s(step):
    """SPEC_SEG §2: before step t the lr is 0.001·(1 − t/20001)^0.9, ×1/10/20 by group; momentum 0.9."""
    model = TinySegNet()
    optimizer = seg_optimizer(model)
    optimizer.global_step = step
    model(torch.randn(1, 3, 8, 8)).sum().backward()
    optimizer.step()
    base = 0.001 * (1 - step / 20001) ** 0.9
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([base, 10 * base, 20 * base])
    assert {group["momentum"] for group in optimizer.param_groups} == {0.9}
    assert [group["weight_decay"] for group in optimizer.param_groups] == [5e-4, 5e-4, 0.0]


# ---------------------------------------------------------------- SPEC_SEG §3: ghost BN


def test_bn_groups_normalise_each_group_alone_and_keep_the_first_group_s_statistics():
    torch.manual_seed(0)
    model = TinySegNet().train()
    images = torch.randn(10, 3, 12, 12) * torch.linspace(0.5, 3, 10)[:, None, None, None]
    alone = [copy.deepcopy(model) for _ in range(2)]
    expected = torch.cat([alone[0](images[:5]), alone[1](images[5:])])
    outputs = forward_in_bn_groups(model, images, bn_group=5)
    torch.testing.assert_close(outputs, expected, rtol=0, atol=0)
    whole_batch = copy.deepcopy(alone[1])(images)
    assert not torch.allclose(outputs, whole_batch, atol=1e-3), "statistics over 10 would differ"
    for buffer in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(model.bn, buffer), getattr(alone[0].bn, buffer)), buffer
    assert model.bn.num_batches_tracked.item() == 1 and model.bn.track_running_stats


def test_bn_groups_gradient_is_that_of_the_separate_groups():
    torch.manual_seed(1)
    model = TinySegNet().train()
    images = torch.randn(6, 3, 10, 10)
    forward_in_bn_groups(model, images, bn_group=3).square().sum().backward()
    separate = copy.deepcopy(model)
    separate.zero_grad()
    for group in images.split(3):
        separate(group).square().sum().backward()
    for (name, param), other in zip(model.named_parameters(), separate.parameters()):
        torch.testing.assert_close(param.grad, other.grad, msg=name)


def test_one_group_is_a_plain_forward_and_frozen_statistics_leave_eval_unchanged():
    torch.manual_seed(2)
    model = TinySegNet().train()
    images = torch.randn(4, 3, 8, 8)
    plain = copy.deepcopy(model)
    torch.testing.assert_close(forward_in_bn_groups(model, images, bn_group=4), plain(images), rtol=0, atol=0)
    assert torch.equal(model.bn.running_mean, plain.bn.running_mean)
    model.eval()
    with running_statistics_frozen(model):
        frozen = model(images)
    torch.testing.assert_close(frozen, model(images), rtol=0, atol=0)


# ---------------------------------------------------------------- SPEC_SEG §2-3: loss


def test_loss_halves_sum_to_the_whole_batch_mean():
    torch.manual_seed(3)
    logits = torch.randn(4, 5, 6, 7, requires_grad=True)
    labels = torch.randint(0, 5, (4, 6, 7))
    labels[2:, :4] = 255  # the second half has fewer valid pixels (padding)
    reference = F.cross_entropy(logits, labels, ignore_index=255)  # the reference's criterion
    total = valid_pixel_count(labels)
    assert total.item() == 4 * 6 * 7 - 2 * 4 * 7
    whole = seg_loss(logits, labels, total)
    halves = [seg_loss(logits[i : i + 2], labels[i : i + 2], total) for i in (0, 2)]
    torch.testing.assert_close(whole, reference)
    torch.testing.assert_close(halves[0] + halves[1], reference)
    # DDP averages the two ranks: world_size 2 makes that average the reference's value and gradient.
    ranks = [seg_loss(logits[i : i + 2], labels[i : i + 2], total, world_size=2) for i in (0, 2)]
    torch.testing.assert_close((ranks[0] + ranks[1]) / 2, reference)
    per_rank_means = [F.cross_entropy(logits[i : i + 2], labels[i : i + 2], ignore_index=255) for i in (0, 2)]
    assert not torch.allclose((per_rank_means[0] + per_rank_means[1]) / 2, reference)
    (gradient,) = torch.autograd.grad(reference, logits)
    (ddp_gradient,) = torch.autograd.grad((ranks[0] + ranks[1]) / 2, logits)
    torch.testing.assert_close(ddp_gradient, gradient)


def test_loss_without_valid_pixels_is_zero():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    labels = torch.full((1, 2, 2), 255)
    loss = seg_loss(logits, labels, valid_pixel_count(labels))
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()


# ---------------------------------------------------------------- SPEC_SEG §4: test time


def bilinear_align_corners(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """K×h×w → K×H×W, element by element: source = destination·(in − 1)/(out − 1)."""
    channels, in_h, in_w = image.shape
    out = np.zeros((channels, height, width))
    for y in range(height):
        for x in range(width):
            sy = y * (in_h - 1) / (height - 1) if height > 1 else 0.0
            sx = x * (in_w - 1) / (width - 1) if width > 1 else 0.0
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1 = min(y0 + 1, in_h - 1), min(x0 + 1, in_w - 1)
            dy, dx = sy - y0, sx - x0
            out[:, y, x] = (
                image[:, y0, x0] * (1 - dy) * (1 - dx)
                + image[:, y0, x1] * (1 - dy) * dx
                + image[:, y1, x0] * dy * (1 - dx)
                + image[:, y1, x1] * dy * dx
            )
    return out


def test_multiscale_probabilities_match_a_slow_loop():
    torch.manual_seed(4)
    model = TinySegNet().eval()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    height, width = 9, 11
    scaled = [torch.randn(3, 5, 6), torch.randn(3, 9, 11), torch.randn(3, 14, 17)]
    probabilities = multiscale_probabilities(model, scaled, (height, width))
    logit_maps = []
    with torch.no_grad():
        for image in scaled:  # the reference's 12 (here 6) single-image forwards
            plain = model(image[None])[0].double().numpy()
            flipped = model(image.flip(-1)[None])[0].double().numpy()
            logit_maps.append(bilinear_align_corners(plain, height, width))
            logit_maps.append(bilinear_align_corners(flipped, height, width)[:, :, ::-1])
    mean = np.mean(logit_maps, axis=0)
    expected = np.exp(mean) / np.exp(mean).sum(axis=0, keepdims=True)
    assert probabilities.shape == (3, height, width)
    np.testing.assert_allclose(probabilities.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_multiscale_probabilities_without_flips_is_one_forward_per_scale():
    torch.manual_seed(4)
    model = TinySegNet().eval()
    batches = []
    model.register_forward_pre_hook(lambda module, inputs: batches.append(inputs[0].shape[0]))
    height, width = 9, 11
    scaled = [torch.randn(3, 5, 6), torch.randn(3, 9, 11)]
    probabilities = multiscale_probabilities(model, scaled, (height, width), flip=False)
    assert batches == [1, 1]
    with torch.no_grad():
        logit_maps = [bilinear_align_corners(model(image[None])[0].double().numpy(), height, width) for image in scaled]
    mean = np.mean(logit_maps, axis=0)
    expected = np.exp(mean) / np.exp(mean).sum(axis=0, keepdims=True)
    np.testing.assert_allclose(probabilities.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_seg_normalize_is_the_reference_s_float32_image_norm():
    image = np.random.default_rng(5).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    expected = image.astype(np.float32)
    for channel in range(3):  # the reference's ImageNorm, channel by channel in float32
        expected[..., channel] = (expected[..., channel] / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
    normalised = seg_normalize(image)
    assert normalised.dtype == np.float32
    np.testing.assert_array_equal(normalised, expected)


def test_img_denorm_truncates_as_the_reference():
    """SPEC_SEG §4: of the 256 values, 62 (R), 39 (G), 36 (B) come back one lower, none otherwise changed."""
    values = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # 1×256×3
    restored = img_denorm(seg_normalize(values).transpose(2, 0, 1))
    assert restored.shape == (1, 256, 3) and restored.dtype == np.uint8 and restored.flags.c_contiguous
    difference = values.astype(int) - restored.astype(int)
    assert set(np.unique(difference)) == {0, 1}
    assert (difference == 1).sum(axis=(0, 1)).tolist() == [62, 39, 36]
