"""The mesh rasterizer's compiled loops (csrc/rasterize.cpp) as an autograd Function, and marching
tetrahedra's compiled topology (csrc/marching_tets.cpp)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pos_clip: Tensor, tri: Tensor, height: int, width: int) -> Tensor:
        rast = torch.ops.threestudio_like_cpu.raster_forward(pos_clip, tri, height, width)
        ctx.save_for_backward(pos_clip, tri, rast)
        return rast

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        pos_clip, tri, rast = ctx.saved_tensors
        return torch.ops.threestudio_like_cpu.raster_backward(grad, pos_clip, tri, rast), None, None, None


def rasterize(pos_clip: Tensor, tri: Tensor, height: int, width: int) -> Tensor:
    """pos_clip [B,V,4], tri [F,3] → rast [B,H,W,4] (u, v, z/w, triangle + 1; 0 where empty), the
    torch path's pixels and values; gradients reach pos_clip through (u, v, z/w)."""
    return _Rasterize.apply(pos_clip, tri.long(), int(height), int(width))


def surface_topology(inside: Tensor, resolution: int, kuhn: Tensor, tri_table: Tensor, tri_count: Tensor,
                     min_faces: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """inside [(R+1)³] bool → (a [E], b [E] lattice vertex ids at the ends of each surface vertex's
    edge, faces [F,3] long): marching tetrahedra's lists in the torch path's order, the components
    with fewer than ``min_faces`` faces (below 1: that fraction of all) dropped unless None."""
    return torch.ops.threestudio_like_cpu.mt_surface(inside.contiguous(), int(resolution), kuhn, tri_table, tri_count,
                                                     float(min_faces or 0.0), min_faces is not None)
