"""ESD — Entropic Score Distillation ("Taming Mode Collapse in Score Distillation", CVPR 2024).

VSD plus an entropy term on the distribution of rendered views, which works out to classifier-free
guidance on ε_φ's camera condition: ε_φ,λ = λ ε_φ(x_t; y, t, 0) + (1 − λ) ε_φ(x_t; y, t, c).
λ = 0 is VSD; the camera-free branch is learned through VSD's camera dropout.
"""
from __future__ import annotations

from dataclasses import dataclass

from threestudio_like.guidance.vsd import VSD, VSDConfig
from threestudio_like.registry import register
from threestudio_like.utils.checks import check_between


@dataclass
class ESDConfig(VSDConfig):
    lambda_entropy: float = 0.5  # λ: the authors' setting; "may vary"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_between(self, 0.0, 1.0, "lambda_entropy")
        if self.guidance_scale_lora != 1.0:
            raise ValueError(
                f"guidance_scale_lora={self.guidance_scale_lora} is set by ESD itself (1 − lambda_entropy); set lambda_entropy instead"
            )


@register("guidance", "esd")
class ESD(VSD):
    """VSD whose ε_φ is pushed away from the camera-conditioned score: s_φ = 1 − λ."""

    Config = ESDConfig

    def camera_scale(self) -> float:
        return 1.0 - self.cfg.lambda_entropy
