"""The render shows the albedo as is (what the embedded prior's references show)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from threestudio_like.materials.base import Material
from threestudio_like.registry import register


@dataclass
class PlainAlbedoConfig:
    pass


@register("material", "no-material")
class PlainAlbedo(Material):
    Config = PlainAlbedoConfig

    def __init__(self, cfg: PlainAlbedoConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, albedo: Tensor, normal: Optional[Tensor], points: Tensor, light_position: Tensor, shading: str = "albedo") -> Tensor:
        return albedo
