"""The implicit volume's density and albedo from its network's outputs in one compiled pass
(csrc/nerf_fields.cpp) as an autograd Function."""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

BIASES = {"none": 0, "blob_magic3d": 1, "blob_dreamfusion": 2}
ACTIVATIONS = {"softplus": 0, "exp": 1}


class FieldSpec(NamedTuple):
    """What the kernel computes (geometry/nerf.py's config): bias kind, blob scale and std, activation, r²."""

    bias: int
    scale: float
    std: float
    activation: int
    radius2: float


class _NerfFields(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, raw: Tensor, points: Tensor, spec: FieldSpec) -> tuple[Tensor, Tensor]:
        density, albedo = torch.ops.threestudio_like_cpu.nerf_fields_forward(raw, points, *spec)
        ctx.save_for_backward(raw, points, albedo)
        ctx.spec = spec
        return density, albedo

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_density: Tensor, g_albedo: Tensor) -> tuple[Tensor, None, None]:
        raw, points, albedo = ctx.saved_tensors
        return torch.ops.threestudio_like_cpu.nerf_fields_backward(raw, points, albedo, g_density, g_albedo, *ctx.spec), None, None


def nerf_fields(raw: Tensor, points: Tensor, spec: FieldSpec) -> tuple[Tensor, Tensor]:
    """raw [N,4] (raw density, 3 albedo logits), points [N,3] (world; no gradient to them) →
    density [N] (zero outside the ball), albedo [N,3] in (0,1); gradients reach raw."""
    return _NerfFields.apply(raw, points, spec)
