"""The volume renderer's compiled CPU path (csrc/volume.cpp): marching, packed weights and
compositing; the last two as autograd Functions."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def march(o: Tensor, d: Tensor, near: Tensor, far: Tensor, hit: Tensor, radius: float, step: float, n_steps: int,
          jitter: Optional[Tensor], binaries: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fixed-step samples of rays o, d [R,3] between near and far [R] where hit [R], ``n_steps`` at
    most, at ``start + jitter·δ`` (jitter [R,S] uniform, or None for midpoints), kept where
    ``binaries`` (the occupancy grid over the box of ``radius``, or None) are set →
    ray [M] (long), t [M], δ [M], points [M,3]."""
    ops = torch.ops.threestudio_like_cpu
    return ops.volume_march(o, d, near, far, hit, jitter, float(radius), float(step), int(n_steps), binaries)


def uniform(rows: int, cols: int) -> Tensor:
    """torch.rand(rows, cols) (float32, the default generator): the same numbers, the generator left
    in the same state, drawn in blocks (csrc/uniform.cpp) instead of one call per element."""
    return torch.ops.threestudio_like_cpu.uniform_float([rows, cols])


class _PackedWeights(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, sigma: Tensor, delta: Tensor, ray: Tensor) -> Tensor:
        w, trans = torch.ops.threestudio_like_cpu.packed_weights_forward(sigma, delta, ray)
        ctx.save_for_backward(sigma, delta, ray, w, trans)
        return w

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return torch.ops.threestudio_like_cpu.packed_weights_backward(grad, *ctx.saved_tensors), None, None


def packed_weights(sigma: Tensor, delta: Tensor, ray: Tensor) -> Tensor:
    """w_i = T_i (1 − e^{−σ_i δ_i}) over samples sorted by ``ray`` [M]; σ, δ [M] → w [M] (∂ to σ)."""
    return _PackedWeights.apply(sigma, delta, ray)


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, ray: Tensor, w: Tensor, t: Tensor, color: Tensor, n_rays: int) -> tuple[Tensor, Tensor, Tensor]:
        ctx.save_for_backward(ray, w, t, color)
        return torch.ops.threestudio_like_cpu.composite_forward(ray, w, t, color, n_rays)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_rgb: Tensor, g_opacity: Tensor, g_depth: Tensor) -> tuple[None, Tensor, None, Tensor, None]:
        grad_w, grad_color = torch.ops.threestudio_like_cpu.composite_backward(g_rgb, g_opacity, g_depth, *ctx.saved_tensors)
        return None, grad_w, None, grad_color, None


def composite_rays(ray: Tensor, w: Tensor, t: Tensor, color: Tensor, n_rays: int) -> tuple[Tensor, Tensor, Tensor]:
    """ray [M] sorted, w, t [M], color [M,3] → rgb [R,3], opacity [R,1], depth [R,1] (∂ to w and color)."""
    return _Composite.apply(ray, w, t, color, n_rays)
