"""The mesh terms' compiled forward and backward (csrc/mesh_terms.cpp) as autograd Functions:
area-weighted vertex normals, normal consistency and the uniform Laplacian term."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

NORMAL_CONSISTENCY, LAPLACIAN = 0, 1


class _VertexNormals(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, v_pos: Tensor, faces: Tensor) -> Tensor:
        ctx.save_for_backward(v_pos, faces)
        return torch.ops.threestudio_like_cpu.vertex_normals_forward(v_pos, faces)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        v_pos, faces = ctx.saved_tensors
        return torch.ops.threestudio_like_cpu.vertex_normals_backward(grad, v_pos, faces), None


class _MeshTerm(torch.autograd.Function):
    """One pass gives the term and its gradient (the step always needs both): the backward scales it."""

    @staticmethod
    def forward(ctx: Any, v_pos: Tensor, faces: Tensor, index: Tensor, degree: Tensor, which: int) -> Tensor:
        want = v_pos.requires_grad
        out = torch.ops.threestudio_like_cpu.mesh_term(v_pos, faces, index, degree, which, want, 1.0)
        if want:
            ctx.save_for_backward(out[1])
        return out[0]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        (unit,) = ctx.saved_tensors
        return unit * grad, None, None, None, None


def vertex_normals(v_pos: Tensor, faces: Tensor) -> Tensor:
    """v_pos [V,3], faces [F,3] long → unit area-weighted vertex normals [V,3] (gradients to v_pos)."""
    return _VertexNormals.apply(v_pos, faces.contiguous())


def normal_consistency(v_pos: Tensor, faces: Tensor, pairs: Tensor) -> Tensor:
    """Scalar mean over adjacent face pairs [P,2] of 1 − cos(n_a, n_b) (P > 0)."""
    return _MeshTerm.apply(v_pos, faces.contiguous(), pairs.contiguous(), pairs.new_zeros(0), NORMAL_CONSISTENCY)


def laplacian_smoothness(v_pos: Tensor, edges: Tensor, degree: Tensor) -> Tensor:
    """Scalar mean over vertices with neighbours (degree [V] > 0; edges [E,2]) of ‖v − mean(neighbours)‖²."""
    return _MeshTerm.apply(v_pos, edges.new_zeros(0, 3), edges.contiguous(), degree.contiguous(), LAPLACIAN)
