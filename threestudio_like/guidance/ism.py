"""ISM — Interval Score Matching (LucidDreamer): CSM's DDIM inversion, scored against the interval's start.

The only change to CSM (guidance/csm.py) is the direction: the guided prediction at x_t minus the
unconditional one at x_s, s = t − δ_t, that the inversion already computed, and its own weighting
and warm-up.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from threestudio_like.guidance.base import Conditions
from threestudio_like.guidance.csm import CSM, CSMConfig
from threestudio_like.registry import register


@dataclass
class ISMConfig(CSMConfig):
    weighting: str = "ism"  # √((1 − ᾱ_t) / ᾱ_t)
    # LucidDreamer's warm-up: t_max 0.98 → 0.5 and δ_t 100 → 50 over the first 1500 steps
    max_step_percent: Any = field(default_factory=lambda: [0, 0.98, 0.5, 1500])
    delta_t: Any = field(default_factory=lambda: [0, 100, 50, 1500])


@register("guidance", "ism")
class ISM(CSM):
    """Interval Score Matching: g = w(t) (ε_s(x_t; y, t) − ε(x_s; ∅, s)) on the same inversion."""

    Config = ISMConfig

    def direction(self, x: Tensor, t: Tensor, conds: Conditions) -> Tensor:
        x_t, eps_s = self.invert(x, t, conds)
        return self.cfg_eps(x_t, t, conds, self.cfg.guidance_scale) - eps_s
