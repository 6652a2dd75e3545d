"""Deterministic forms of the ops the trainers use that have no deterministic CUDA kernel: under
`--deterministic` (`engine.runtime.set_kernel_policy`) PyTorch refuses them on CUDA, so these helpers pick an
equivalent built from ops that have one (matmuls, gather). Elsewhere each is the plain PyTorch op, bit for bit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _deterministic_cuda(x: Tensor) -> bool:
    return x.is_cuda and torch.are_deterministic_algorithms_enabled()


def interpolation_matrix(
    in_size: int, out_size: int | None, scale_factor: float | None, align_corners: bool, like: Tensor
) -> Tensor:
    """The out×in weights of 1-D linear interpolation, F.interpolate's own (bilinear is this along each axis):
    row i holds the weights output i gives the inputs, read off by interpolating the identity."""
    identity = torch.eye(in_size, dtype=like.dtype, device=like.device)[None]  # channel c: the c-th basis vector
    with torch.no_grad():
        weights = F.interpolate(
            identity, size=out_size, scale_factor=scale_factor, mode="linear", align_corners=align_corners
        )
    return weights[0].T


def separable_bilinear(
    x: Tensor, size: tuple[int, int] | None, scale_factor: float | None, align_corners: bool
) -> Tensor:
    """F.interpolate(x, size or scale_factor, mode="bilinear") as rows · x · columnsᵀ: the same weights, sums
    in another order (within float rounding), and a backward of matmuls, deterministic on CUDA."""
    height, width = x.shape[-2:]
    out_height, out_width = (None, None) if size is None else size
    rows = interpolation_matrix(height, out_height, scale_factor, align_corners, x)
    columns = interpolation_matrix(width, out_width, scale_factor, align_corners, x)
    return rows @ x @ columns.T


def resize_bilinear(
    x: Tensor, size: tuple[int, int] | None = None, *, scale_factor: float | None = None, align_corners: bool
) -> Tensor:
    """Bilinear resize of an N×C×H×W tensor to `size` or by `scale_factor`; on CUDA under deterministic
    algorithms, when a gradient will flow, `separable_bilinear` (PyTorch's bilinear backward is atomic adds)."""
    if _deterministic_cuda(x) and torch.is_grad_enabled() and x.requires_grad:
        return separable_bilinear(x, None if size is None else tuple(size), scale_factor, align_corners)
    return F.interpolate(x, size=size, scale_factor=scale_factor, mode="bilinear", align_corners=align_corners)


def cross_entropy_sum(logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """F.cross_entropy(reduction="sum") of N×K×H×W logits against N×H×W labels, `ignore_index` left out; on
    CUDA under deterministic algorithms as log-softmax and gather (PyTorch's nll_loss2d has no deterministic
    CUDA kernel)."""
    if not _deterministic_cuda(logits):
        return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    valid = labels != ignore_index
    picked = F.log_softmax(logits, dim=1).gather(1, labels.where(valid, 0).unsqueeze(1)).squeeze(1)
    return -picked.where(valid, 0).sum()
