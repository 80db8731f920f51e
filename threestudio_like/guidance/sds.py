"""SDS — DreamFusion's score distillation."""
from __future__ import annotations

import torch
from torch import Tensor

from threestudio_like.guidance.base import Conditions, ScoreDistillation
from threestudio_like.registry import register


@register("guidance", "sds")
class SDS(ScoreDistillation):
    """Pull the render toward the guided denoiser's opinion: g = w(t) (ε_s(x_t; y, t) − ε)."""

    def direction(self, x: Tensor, t: Tensor, conds: Conditions) -> Tensor:
        noise = torch.randn_like(x)
        x_t = self.add_noise(x, noise, t)
        return self.cfg_eps(x_t, t, conds, self.cfg.guidance_scale) - noise
