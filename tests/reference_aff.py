"""SPEC_AFF §1 and §4 as the reference computes them, with loops and the dense (g_h g_w)² transition matrix:
tests/test_aff.py and tests/test_resnet38_aff.py compare tool/aff.py against them, and bench/aff_walk.py times
the dense walk."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def directions_loop(radius: int) -> list[tuple[int, int]]:
    """SPEC_AFF §1: (0, 1) … (0, r−1), then y = 1 … r−1 (outer), x = −r+1 … r−1 with x² + y² < r²."""
    directions = [(0, x) for x in range(1, radius)]
    for y in range(1, radius):
        for x in range(-radius + 1, radius):
            if x * x + y * y < radius * radius:
                directions.append((y, x))
    return directions


def pairs_loop(grid: tuple[int, int], radius: int) -> tuple[list[int], list[list[int]]]:
    """SPEC_AFF §1: the sources grid[0:g_h−r+1, r−1:g_w−r+1] row-major (flat indices), and per direction the
    flat index of each source's target."""
    height, width = grid
    margin = radius - 1
    sources = [(y, x) for y in range(height - margin) for x in range(margin, width - margin)]
    targets = [[(y + dy) * width + x + dx for y, x in sources] for dy, dx in directions_loop(radius)]
    return [y * width + x for y, x in sources], targets


def dense_affinity(aff: Tensor, grid: tuple[int, int], radius: int) -> Tensor:
    """SPEC_AFF §1's dense form of one image's aff (D×M): A[from, to] = A[to, from] = aff, A[i, i] = 1, else 0."""
    sources, targets = pairs_loop(grid, radius)
    nodes = grid[0] * grid[1]
    affinity = torch.zeros(nodes, nodes, dtype=aff.dtype)
    src = torch.tensor(sources).expand(len(targets), -1)
    dst = torch.tensor(targets)
    affinity[src, dst] = aff
    affinity[dst, src] = aff
    affinity.diagonal().fill_(1)
    return affinity


def walk_dense(x: Tensor, aff: Tensor, grid: tuple[int, int], radius: int, beta: float, logt: int) -> Tensor:
    """SPEC_AFF §4 steps 3-6: A^β, T = A / column sums, T squared logt times, rw = x·T. x C×n → C×n."""
    transition = dense_affinity(aff, grid, radius) ** beta
    transition = transition / transition.sum(dim=0, keepdim=True)
    for _ in range(logt):
        transition = transition @ transition
    return x @ transition


def walk_labels_dense(scores: Tensor, aff: Tensor, grid: tuple[int, int], radius: int, beta: float, logt: int):
    """SPEC_AFF §4 steps 3-7 as infer_aff.py runs them: scores C×H×W zero-padded to 8·grid, 8×8 average pool, the
    dense walk, bilinear ×8 (align_corners False), argmax over the C channels, crop → H×W int64."""
    height, width = scores.shape[1:]
    padded = F.pad(scores, (0, 8 * grid[1] - width, 0, 8 * grid[0] - height))
    pooled = F.avg_pool2d(padded, 8, 8)
    walked = walk_dense(pooled.reshape(len(scores), -1), aff, grid, radius, beta, logt)
    upsampled = F.interpolate(walked.view(1, -1, *grid), scale_factor=8, mode="bilinear", align_corners=False)
    return upsampled[0].argmax(dim=0)[:height, :width]
