"""Materials turn per-sample albedo (and normals, for lit shading) into colors."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

SHADINGS = ("albedo", "diffuse", "textureless")


class Material(nn.Module):
    """``forward(albedo [N,3], normal [N,3]|None, points [N,3], light_position [N,3], shading)`` → rgb [N,3]."""

    def requires_normal(self, shading: str) -> bool:
        return False

    def training_shading(self, step: int, generator: Optional[torch.Generator] = None) -> str:
        """The shading used for a training step (lit materials pick randomly)."""
        return "albedo"

    def forward(self, albedo: Tensor, normal: Optional[Tensor], points: Tensor, light_position: Tensor, shading: str = "albedo") -> Tensor:
        raise NotImplementedError
