"""Diffuse albedo lit by a point light, as DreamFusion shades its renders.

Random lighting stops the optimisation from painting shading into the albedo; the textureless
phase (white albedo, lit) makes the prior judge the shape alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio_like.materials.base import Material
from threestudio_like.registry import register
from threestudio_like.utils.checks import check_at_least, check_between


@dataclass
class PointLightConfig:
    ambient_light_color: float = 0.1
    diffuse_light_color: float = 0.9
    ambient_only_steps: int = 1000  # warm-up: albedo only, no lighting
    textureless_prob: float = 0.5  # after warm-up: chance of a textureless (white) lit render
    albedo_prob: float = 0.0  # after warm-up: chance of an unlit albedo render

    def __post_init__(self) -> None:
        check_at_least(self, 0, "ambient_light_color", "diffuse_light_color", "ambient_only_steps")
        check_between(self, 0.0, 1.0, "textureless_prob", "albedo_prob")
        if not 0.0 <= self.textureless_prob + self.albedo_prob <= 1.0:
            raise ValueError("textureless_prob + albedo_prob must lie in [0, 1]")


@register("material", "diffuse-with-point-light")
class PointLightMaterial(Material):
    Config = PointLightConfig

    def __init__(self, cfg: PointLightConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def requires_normal(self, shading: str) -> bool:
        return shading in ("diffuse", "textureless")

    def training_shading(self, step: int, generator: Optional[torch.Generator] = None) -> str:
        if step < self.cfg.ambient_only_steps:
            return "albedo"
        u = torch.rand((), generator=generator).item()
        if u < self.cfg.albedo_prob:
            return "albedo"
        if u < self.cfg.albedo_prob + self.cfg.textureless_prob:
            return "textureless"
        return "diffuse"

    def forward(self, albedo: Tensor, normal: Optional[Tensor], points: Tensor, light_position: Tensor, shading: str = "albedo") -> Tensor:
        if shading == "albedo":
            return albedo
        if normal is None:
            raise ValueError(f"shading {shading!r} needs normals")
        light_dir = F.normalize(light_position - points, dim=-1)
        lambert = (normal * light_dir).sum(-1, keepdim=True).clamp_min(0.0)
        light = self.cfg.ambient_light_color + self.cfg.diffuse_light_color * lambert
        base = torch.ones_like(albedo) if shading == "textureless" else albedo
        return (base * light).clamp(0.0, 1.0)
