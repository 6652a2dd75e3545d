"""SPEC-IRN §9's random walk as the reference computes it: the dense (hw)×(hw) transition matrix, squared.
tests/test_irn.py and tests/test_make_sem_seg_labels.py compare tool/irn.py's sparse walk against it, and
bench/random_walk.py times it."""

from __future__ import annotations

import torch
from torch import Tensor

from tool.irn import WALK_BETA, WALK_EXP_TIMES, WALK_RADIUS, walk_affinity


def random_walk_dense(
    cam: Tensor,
    boundary: Tensor,
    beta: float = WALK_BETA,
    exp_times: int = WALK_EXP_TIMES,
    radius: int = WALK_RADIUS,
) -> Tensor:
    """SPEC-IRN §9 as the reference computes it: the dense (hw)×(hw) transition matrix T, squared
    exp_times times; rw = (cam · (1 − boundary)) · T^(2^exp_times). cam K×h×w, boundary h×w → K×h×w.
    O((hw)³) time and O((hw)²) memory: the oracle of `tool.irn.random_walk`."""
    height, width = boundary.shape
    aff, path_index = walk_affinity(boundary, radius)
    padded_h, padded_w = path_index.size
    vertices = padded_h * padded_w
    src = path_index.src_indices.expand_as(path_index.dst_indices)
    dst = path_index.dst_indices
    # step 2: symmetric A over the padded grid, ones on the diagonal, then the real pixels only
    affinity = torch.zeros(vertices, vertices, dtype=aff.dtype, device=aff.device)
    affinity[src, dst] = aff
    affinity[dst, src] = aff
    affinity.diagonal().fill_(1)
    affinity = affinity.view(padded_h, padded_w, padded_h, padded_w)[:-radius, radius:-radius, :-radius, radius:-radius]
    affinity = affinity.reshape(height * width, height * width)
    # steps 3–4
    transition = affinity**beta
    transition = transition / transition.sum(dim=0, keepdim=True)
    for _ in range(exp_times):
        transition = transition @ transition
    # step 5
    return ((cam * (1 - boundary)).flatten(-2) @ transition).view(-1, height, width)
