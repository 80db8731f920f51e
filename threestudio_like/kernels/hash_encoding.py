"""The hash encoding's compiled forward and backward (csrc/hash_encoding.cpp) as an autograd Function."""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class HashLayout(NamedTuple):
    """What the kernel needs to know of a grid: the active levels' resolutions, every level's first
    table row, how many leading levels are dense, log2 of a hashed level's size, the level count."""

    resolutions: list[int]
    offsets: list[int]
    n_dense: int
    log2_size: int
    n_levels: int


class _HashEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, table: Tensor, layout: HashLayout, feature_major: bool) -> Tensor:
        ctx.save_for_backward(x, table)
        ctx.layout = layout
        return torch.ops.threestudio_like_cpu.hash_forward(x, table, *layout, feature_major)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, table = ctx.saved_tensors
        res, offsets, n_dense, log2_size, _ = ctx.layout
        ops = torch.ops.threestudio_like_cpu
        grad_x = ops.hash_backward_points(x, table, grad.contiguous(), res, offsets, n_dense, log2_size) if ctx.needs_input_grad[0] else None
        grad_table = None
        if ctx.needs_input_grad[1]:
            grad_table = ops.hash_backward_table(x, grad, res, offsets, n_dense, log2_size, table.shape[0], table.shape[1])
        return grad_x, grad_table, None, None


def hash_encode(x: Tensor, table: Tensor, layout: HashLayout, feature_major: bool = False) -> Tensor:
    """x [N,3] in [0,1] (already clamped), table [T,F] of x's dtype → features [N, n_levels·F],
    zero past the active levels (``feature_major``: stored as [n_levels·F, N], seen as [N, n_levels·F]);
    gradients reach the table and, when it requires them, x."""
    return _HashEncode.apply(x, table, layout, feature_major)
