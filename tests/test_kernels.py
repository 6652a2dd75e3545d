"""engine/kernels.py: the deterministic forms equal PyTorch's ops (values and gradients), and elsewhere the
helpers are PyTorch's ops bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine import kernels


@pytest.mark.parametrize(
    "shape, size, scale_factor",
    [((2, 3, 7, 5), (28, 20), None), ((1, 2, 9, 13), (4, 6), None), ((2, 3, 5, 6), None, 2), ((1, 4, 3, 5), None, 4)],
)
@pytest.mark.parametrize("align_corners", [True, False])
def test_separable_bilinear_is_the_bilinear_resize_with_its_gradient(shape, size, scale_factor, align_corners):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    expected = F.interpolate(x, size=size, scale_factor=scale_factor, mode="bilinear", align_corners=align_corners)
    result = kernels.separable_bilinear(x, size, scale_factor, align_corners)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)
    upstream = torch.randn_like(expected)
    (expected_grad,) = torch.autograd.grad(expected, x, upstream)
    (grad,) = torch.autograd.grad(result, x, upstream)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)


def test_off_cuda_the_helpers_are_pytorchs_ops_bit_for_bit_even_under_deterministic_algorithms():
    x = torch.randn(2, 3, 6, 7, requires_grad=True)
    logits, labels = torch.randn(2, 4, 5, 5), torch.randint(0, 4, (2, 5, 5))
    labels[0, 0] = 255
    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        resized = kernels.resize_bilinear(x, (12, 14), align_corners=True)
        loss = kernels.cross_entropy_sum(logits, labels, 255)
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.equal(resized, F.interpolate(x, (12, 14), mode="bilinear", align_corners=True))
    assert torch.equal(loss, F.cross_entropy(logits, labels, ignore_index=255, reduction="sum"))


def test_the_gather_form_of_the_cross_entropy_leaves_the_ignored_pixels_out(monkeypatch):
    logits = torch.randn(2, 5, 4, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (2, 4, 6))
    labels[0, :2] = 255
    expected = F.cross_entropy(logits, labels, ignore_index=255, reduction="sum")
    monkeypatch.setattr(kernels, "_deterministic_cuda", lambda tensor: True)
    result = kernels.cross_entropy_sum(logits, labels, 255)
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(result, logits)[0], torch.autograd.grad(expected, logits)[0])


def test_resize_takes_the_separable_form_only_where_a_gradient_flows(monkeypatch):
    taken = []
    monkeypatch.setattr(kernels, "_deterministic_cuda", lambda tensor: True)
    monkeypatch.setattr(kernels, "separable_bilinear", lambda *args: taken.append(args[1:]) or args[0])
    kernels.resize_bilinear(torch.ones(1, 1, 2, 2, requires_grad=True), (4, 4), align_corners=True)
    with torch.no_grad():
        kernels.resize_bilinear(torch.ones(1, 1, 2, 2, requires_grad=True), (4, 4), align_corners=True)
    kernels.resize_bilinear(torch.ones(1, 1, 2, 2), scale_factor=2, align_corners=False)
    assert taken == [((4, 4), None, True)]
