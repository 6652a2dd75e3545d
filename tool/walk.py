"""The random walk's sparse transition and its steps, shared by every walk on a pair set (SPEC_AFF §4; SPEC-IRN §9
builds the same T from its own pairs): A symmetric with ones on the diagonal, T = A^β / column sums, rw = x·T^t
as t sparse steps, never the dense (n)×(n) matrix the references square.

Pure functions of tensors: each runs on the device its inputs are on."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


def sparse_transition(src: Tensor, dst: Tensor, weight: Tensor, num_nodes: int) -> Tensor:
    """Tᵀ as an (n)×(n) CSR matrix, so that x·T = (Tᵀ·xᵀ)ᵀ, from the pairs (src[k], dst[k]) of weight A^β
    (1-D, each unordered pair once, no self pair): A[i, j] = A[j, i] = weight, A[i, i] = 1, every other entry 0,
    and T[i, j] = A[i, j] / Σ_i' A[i', j] (each column of T sums to 1). A node without a pair has T[:, j] = e_j."""
    # int32 indices where they fit: half the index traffic of each of the walk's products, and a faster sort
    index_dtype = torch.int32 if num_nodes * num_nodes < 2**31 else torch.int64
    diagonal = torch.arange(num_nodes, device=weight.device)
    rows = torch.cat([src, dst, diagonal]).to(index_dtype)
    cols = torch.cat([dst, src, diagonal]).to(index_dtype)
    values = torch.cat([weight, weight, torch.ones(num_nodes, dtype=weight.dtype, device=weight.device)])
    column_sum = torch.zeros(num_nodes, dtype=weight.dtype, device=weight.device).index_add_(0, cols, values)
    # Tᵀ's row j is T's column j: entries sorted by (j, i), each (j, i) once, so CSR is a sort and a count
    order = torch.argsort(cols * num_nodes + rows)
    row_starts = torch.zeros(num_nodes + 1, dtype=index_dtype, device=weight.device)
    row_starts[1:] = torch.cumsum(torch.bincount(cols, minlength=num_nodes), dim=0)
    with warnings.catch_warnings():
        # torch calls all of CSR "beta"; CSR @ dense is what it has long supported
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            row_starts, rows[order], (values / column_sum[cols])[order], (num_nodes, num_nodes), check_invariants=False
        )


def walk(transposed: Tensor, x: Tensor, steps: int) -> Tensor:
    """x·T^steps as `steps` sparse products: x C×n, `transposed` = Tᵀ (`sparse_transition`) → C×n. Equal to the
    references' x·T^(2^k) by squaring (steps = 2^k) up to float rounding; C·nnz·steps multiply-adds instead of
    k·n³."""
    walked = x.T.contiguous()
    for _ in range(steps):
        walked = transposed @ walked
    return walked.T
