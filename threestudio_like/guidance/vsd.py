"""VSD — ProlificDreamer's variational score distillation.

The "− ε" of SDS becomes the score of the renders themselves, ε_φ(x_t; y, t, c): a second network,
camera-conditioned, trained every step on the current (detached) renders. The prior supplies it
(``prior.variational_copy(rank)``: LoRA on Stable Diffusion's UNet, a small UNet for the embedded prior).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio_like import diffusion
from threestudio_like.guidance.base import Conditions, GuidanceConfig, ScoreDistillation
from threestudio_like.registry import register
from threestudio_like.utils.checks import check_at_least, check_between, check_finite, check_learning_rates


@dataclass
class VSDConfig(GuidanceConfig):
    guidance_scale: float = 7.5
    # ProlificDreamer: t_max drops from 0.98 to 0.5 at step 5000
    max_step_percent: Any = field(default_factory=lambda: [5000, 0.98, 0.5, 5001])
    guidance_scale_lora: float = 1.0  # s_φ: CFG of ε_φ on its camera condition (1 = camera-conditioned only)
    lora_rank: int = 4  # rank of the LoRA copy (a prior with a from-scratch ε_φ ignores it)
    lora_lr: float = 1e-4  # ε_φ's AdamW
    lora_betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    lora_eps: float = 1e-15
    lora_weight_decay: float = 0.01
    lora_n_timestamp_samples: int = 1  # timesteps t' drawn per render for ε_φ's own loss
    camera_dropout: float = 0.1  # per item: trains the camera-free branch ε_φ(x_t; y, t, 0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank={self.lora_rank} must be at least 1")
        if self.lora_lr <= 0:
            raise ValueError(f"lora_lr={self.lora_lr} must be positive")
        if len(self.lora_betas) != 2:
            raise ValueError(f"lora_betas={list(self.lora_betas)!r} must be [beta1, beta2]")
        if self.lora_n_timestamp_samples < 1:
            raise ValueError(f"lora_n_timestamp_samples={self.lora_n_timestamp_samples} must be at least 1")
        if not 0.0 <= self.camera_dropout <= 1.0:
            raise ValueError(f"camera_dropout={self.camera_dropout} must be in [0, 1]")
        check_at_least(self, 0, "lora_eps", "lora_weight_decay")
        check_learning_rates(self, "lora_lr")
        check_between(self, 0.0, 0.999999, "lora_betas")
        check_finite(self, "guidance_scale_lora")


@register("guidance", "vsd")
class VSD(ScoreDistillation):
    """g = w(t) (ε_s(x_t; y_view, t) − ε_φ,s_φ(x_t; y, t, c)), one ε for both terms."""

    Config = VSDConfig
    trains_a_network = True

    def __init__(self, cfg: VSDConfig, prior) -> None:
        super().__init__(cfg, prior)
        self.variational = prior.variational_copy(cfg.lora_rank)  # a submodule: saved in checkpoints

    def camera_scale(self) -> float:
        """s_φ in ε_φ,s_φ = ε_φ(·, 0) + s_φ (ε_φ(·, c) − ε_φ(·, 0))."""
        return self.cfg.guidance_scale_lora

    def make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over ε_φ's trainable parameters (an empty group for a training-free ε_φ)."""
        cfg = self.cfg
        params = list(self.variational.trainable_parameters())
        return torch.optim.AdamW(
            [{"params": params, "name": "variational"}], lr=cfg.lora_lr, betas=tuple(cfg.lora_betas),
            eps=cfg.lora_eps, weight_decay=cfg.lora_weight_decay,
        )

    def variational_eps(self, x_t: Tensor, t: Tensor, cond: Tensor, camera: Tensor) -> Tensor:
        """ε_φ(x_t; cond, t, camera) [B,C,h,w], converted from v when ε_φ predicts v."""
        out = self.variational(x_t, t, cond, camera).to(x_t.dtype)
        if self.variational.prediction_type == "v_prediction":
            out = diffusion.eps_from_v(out, x_t, self.alpha_bar(t, x_t))
        return out

    def render_eps(self, x_t: Tensor, t: Tensor, conds: Conditions) -> Tensor:
        """ε_φ,s_φ: camera-guided ε_φ with the view-independent prompt; one 2B forward unless s_φ = 1."""
        cond = conds.plain
        camera = conds.cameras.flat_matrices().to(x_t)
        scale = self.camera_scale()
        if scale == 1.0:  # the camera-free half would be multiplied by zero: skip it
            return self.variational_eps(x_t, t, cond, camera)
        eps = self.variational_eps(
            torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, cond]), torch.cat([camera, torch.zeros_like(camera)])
        )
        eps_camera, eps_free = eps.chunk(2)
        return diffusion.guided(eps_camera, eps_free, scale)

    def direction(self, x: Tensor, t: Tensor, conds: Conditions) -> Tensor:
        noise = torch.randn_like(x)
        x_t = self.add_noise(x, noise, t)
        return self.cfg_eps(x_t, t, conds, self.cfg.guidance_scale) - self.render_eps(x_t, t, conds)

    def loss_terms(self) -> tuple[str, ...]:
        return (*super().loss_terms(), "lora")

    def extra_losses(self, x: Tensor, conds: Conditions) -> dict[str, Tensor]:
        """ε_φ's denoising loss on the detached renders x [B,C,h,w]: t' over the full range, fresh noise."""
        n = self.cfg.lora_n_timestamp_samples
        x0 = x.detach().repeat(n, *([1] * (x.dim() - 1)))
        cond = conds.plain.repeat(n, *([1] * (conds.plain.dim() - 1)))
        camera = conds.cameras.flat_matrices().to(x0).repeat(n, 1)
        keep = torch.rand(len(x0), 1, device=x0.device) >= self.cfg.camera_dropout
        camera = camera * keep
        t = torch.randint(0, self.prior.num_train_timesteps, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        pred = self.variational(self.add_noise(x0, noise, t), t, cond, camera)
        if self.variational.prediction_type == "v_prediction":
            noise = diffusion.v_target(x0, noise, self.alpha_bar(t, x0))
        loss = F.mse_loss(pred.float(), noise.float())
        # a training-free ε_φ learns by remembering the renders; a trained one through the loss
        self.variational.observe(x.detach(), conds.cameras.flat_matrices().to(x))
        return {"loss_lora": loss}
