"""The mesh rasterizer's compiled loops (csrc/rasterize.cpp, antialias.cpp) as autograd Functions, marching
tetrahedra's compiled topology (csrc/marching_tets.cpp), a mesh's (csrc/mesh_topology.cpp) and the
export's visibility test (csrc/visibility.cpp)."""
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


def mesh_topology(faces: Tensor, n_vertices: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """faces [F,3] long → (the face edges' sorted keys [3F] and the stable order sorting them [3F],
    unique edges [E,2], adjacent face pairs [P,2], neighbour counts [V], the vertex across each
    face edge [F,3] (−1 on open edges)): geometry/mesh.py's and renderers/antialias.py's arrays."""
    return torch.ops.threestudio_like_cpu.mesh_topology(faces.contiguous(), int(n_vertices))


class _Antialias(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, color: Tensor, rast: Tensor, pos_clip: Tensor, tri: Tensor, opposite: Tensor) -> Tensor:
        ctx.save_for_backward(color, rast, pos_clip, tri, opposite)
        return torch.ops.threestudio_like_cpu.antialias_forward(color, rast, pos_clip, tri, opposite)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, Tensor, None, None]:
        g_color, g_pos = torch.ops.threestudio_like_cpu.antialias_backward(grad, *ctx.saved_tensors)
        return g_color, None, g_pos, None, None


def antialias(color: Tensor, rast: Tensor, pos_clip: Tensor, tri: Tensor, opposite: Tensor) -> Tensor:
    """renderers/antialias.py's blend of color [B,H,W,C] across silhouettes (the same image), with
    gradients to color and pos_clip (rast and pos_clip of color's float type; opposite [F,3] long)."""
    return _Antialias.apply(color, rast.detach(), pos_clip, tri.long(), opposite.long())


def seen_by_views(points: Tensor, normals: Tensor, w2c: Tensor, position: Tensor, focal: Tensor, drawn: Tensor,
                  height: int, width: int, near: float, min_cosine: float, tolerance_px: float) -> Tensor:
    """export/visibility.py's seen_in_view over n cameras at once: points, normals [N,3] float32;
    per camera its world → camera matrix [n,4,4], centre [n,3], focal length [n] (pixels) and drawn
    depth [n,H·W] (inf where empty) → bool [N], seen by at least one."""
    return torch.ops.threestudio_like_cpu.seen_by_views(points.contiguous(), normals.contiguous(), w2c, position, focal,
                                                        drawn.float(), int(height), int(width), float(near),
                                                        float(min_cosine), float(tolerance_px))
