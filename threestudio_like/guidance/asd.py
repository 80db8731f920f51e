"""ASD — Asynchronous Score Distillation (ScaleDreamer).

VSD's score of the renders, without a network to train: the frozen prior itself, asked at a later
(noisier) timestep t⁺ with the same noise, stands in for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from threestudio_like import diffusion
from threestudio_like.guidance.base import Conditions, GuidanceConfig, ScoreDistillation
from threestudio_like.registry import register


@dataclass
class ASDConfig(GuidanceConfig):
    guidance_scale: float = 7.5
    # ScaleDreamer: t_min 0.5 → 0.02 and t_max 0.98 → 0.5, linearly over 25k steps
    min_step_percent: Any = field(default_factory=lambda: [0, 0.5, 0.02, 25000])
    max_step_percent: Any = field(default_factory=lambda: [0, 0.98, 0.5, 25000])
    plus_ratio: float = 0.1  # ρ: t⁺ − t is at most ρ (t − t_min)
    plus_random: bool = True  # scale the shift by u ~ U[0, 1] per item

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.plus_ratio < 0:
            raise ValueError(f"plus_ratio={self.plus_ratio} must be >= 0")


@register("guidance", "asd")
class ASD(ScoreDistillation):
    """g = w(t) (ε_s(x_t; y, t) − ε(x_{t⁺}; y, t⁺)), x_t and x_{t⁺} from the same ε."""

    Config = ASDConfig

    def shifted(self, t: Tensor) -> Tensor:
        """t⁺ [B] = clamp(t + ⌊u Δ⌋, 1, T − 1), Δ = clamp(ρ (t − t_min), 0, T − 1 − t), u ~ U[0, 1] when
        plus_random (else 1), t_min the current one: clamped before the draw, as ScaleDreamer's get_t_plus."""
        T = self.prior.num_train_timesteps
        delta = (self.cfg.plus_ratio * (t - self.min_step).float()).clamp(min=0.0)
        delta = torch.minimum(delta, (T - 1 - t).float())
        if self.cfg.plus_random:
            delta = delta * torch.rand(t.shape, device=t.device)
        return (t + delta.floor().long()).clamp(1, T - 1)

    def direction(self, x: Tensor, t: Tensor, conds: Conditions) -> Tensor:
        noise = torch.randn_like(x)
        t_plus = self.shifted(t)
        x_t, x_plus = self.add_noise(x, noise, t), self.add_noise(x, noise, t_plus)
        # positive and ∅ (and Perp-Neg's negatives) at t, the positive at t⁺: one forward of 3B (5B)
        eps_cond, eps_null, (eps_plus,) = self.predict(x_t, t, conds, also=[(x_plus, t_plus, conds.positive)])
        return diffusion.guided(eps_cond, eps_null, self.cfg.guidance_scale) - eps_plus
