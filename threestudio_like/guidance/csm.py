"""CSM — Classifier Score Matching (TV-3DG); ISM (guidance/ism.py) shares its noising.

Two changes to SDS: keep only the classifier term s_c (ε(x_t; y) − ε(x_t; ∅)), and noise the render
deterministically by DDIM inversion with the prior's unconditional prediction, so the same render
always gets the same x_t. The inversion follows LucidDreamer's: from a slightly noised x at t0, strided
DDIM steps upward to s = t − δ_t, then one step of δ_t to t.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from threestudio_like import diffusion
from threestudio_like.guidance.base import Conditions, GuidanceConfig, ScoreDistillation
from threestudio_like.registry import register
from threestudio_like.utils.schedules import check_schedule, schedule_value
from threestudio_like.utils.checks import check_schedule_between


@dataclass
class CSMConfig(GuidanceConfig):
    guidance_scale: float = 7.5  # s_c
    max_step_percent: Any = field(default_factory=lambda: [5000, 0.98, 0.5, 5001])  # annealed like VSD
    delta_t: Any = 50  # δ_t of the last inversion step s → t (number or schedule)
    xs_delta_t: int = 200  # stride of the inversion from t0 up to s
    xs_inv_steps: Optional[int] = None  # strided steps; None: as many as it takes from t0 = 0 to s
    fix_noise: bool = True  # the noise at t0 is drawn from noise_seed: the same render gets the same x_t
    noise_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_schedule(self.delta_t, "delta_t")
        check_schedule_between(self, 0, float("inf"), "delta_t")
        if self.xs_delta_t < 1:
            raise ValueError(f"xs_delta_t={self.xs_delta_t} must be at least 1")
        if self.xs_inv_steps is not None and self.xs_inv_steps < 0:
            raise ValueError(f"xs_inv_steps={self.xs_inv_steps} must be >= 0 (or null for 'up to s')")


@register("guidance", "csm")
class CSM(ScoreDistillation):
    """g = w(t) s_c (ε(x_t; y, t) − ε(x_t; ∅, t)), x_t the DDIM inversion of the render."""

    Config = CSMConfig

    def start_noise(self, x: Tensor) -> Tensor:
        """ε at t0 [B,C,h,w]: seeded (the same for the same shape) unless ``fix_noise`` is off."""
        if not self.cfg.fix_noise:
            return torch.randn_like(x)
        generator = torch.Generator().manual_seed(self.cfg.noise_seed)
        return torch.randn(x.shape, generator=generator).to(x)

    def ddim_up(self, x_from: Tensor, eps: Tensor, t_from: Tensor, t_to: Tensor) -> Tensor:
        """One deterministic DDIM step t_from → t_to [B] (upward here)."""
        return diffusion.ddim_step(x_from, eps, self.alpha_bar(t_from, x_from), self.alpha_bar(t_to, x_from))

    def invert(self, x: Tensor, t: Tensor, conds: Conditions) -> tuple[Tensor, Tensor]:
        """(x_t, ε(x_s; ∅, s)) for renders x [B,C,h,w] at timesteps t [B], s = max(t − δ_t, 0)."""
        cfg = self.cfg
        s = (t - int(round(schedule_value(cfg.delta_t, self.step)))).clamp(min=0)
        steps = torch.ceil(s / cfg.xs_delta_t).long() if cfg.xs_inv_steps is None else torch.full_like(s, cfg.xs_inv_steps)
        current = (s - cfg.xs_delta_t * steps).clamp(min=0)
        x_cur = self.add_noise(x, self.start_noise(x), current)
        null = conds.null
        while True:
            # items need different numbers of strided steps: run the prior on those not yet at s
            active = (current < s).nonzero().squeeze(1)
            if len(active) == 0:
                break
            nxt = torch.minimum(current[active] + cfg.xs_delta_t, s[active])
            eps = self.prior.predict_noise(x_cur[active], current[active], null[active])
            x_cur = x_cur.index_copy(0, active, self.ddim_up(x_cur[active], eps, current[active], nxt))
            current = current.index_copy(0, active, nxt)
        eps_s = self.prior.predict_noise(x_cur, s, null)
        return self.ddim_up(x_cur, eps_s, s, t), eps_s

    def direction(self, x: Tensor, t: Tensor, conds: Conditions) -> Tensor:
        x_t, _ = self.invert(x, t, conds)
        eps_cond, eps_null, _ = self.predict(x_t, t, conds)
        return self.cfg.guidance_scale * (eps_cond - eps_null)
