"""ScoreDistillation: what every guidance method shares.

The base owns timesteps and their annealing, noising, classifier-free guidance, the weighting w(t)
and the turning of a gradient into a loss. A method subclass defines only ``direction`` — the
un-weighted gradient it puts on the rendered latents — and, if it trains a network of its own,
``extra_losses``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from threestudio_like.config import check_choice
from threestudio_like.data.cameras import Cameras
from threestudio_like.guidance import perp_neg
from threestudio_like.priors.base import DiffusionPrior
from threestudio_like.prompts import Prompt
from threestudio_like.utils.schedules import check_schedule, schedule_value
from threestudio_like.utils.checks import check_finite, check_schedule_between, check_schedules_ordered

WEIGHTINGS = ("sds", "uniform", "fantasia3d", "ism")
TIME_SCHEDULES = ("random", "linear")


@dataclass
class GuidanceConfig:
    guidance_scale: float = 100.0  # diffusers' CFG convention: ε_∅ + s(ε_y − ε_∅)
    min_step_percent: Any = 0.02  # number or [start_step, v0, v1, end_step]
    max_step_percent: Any = 0.98
    # w(t): sds = 1 − ᾱ_t, uniform = 1, fantasia3d = √ᾱ_t (1 − ᾱ_t), ism = √((1 − ᾱ_t) / ᾱ_t) (LucidDreamer)
    weighting: str = "sds"
    # random: t ~ U{t_min..t_max} per item; linear: one t annealed from t_max to t_min over the run
    # (DreamGaussian)
    time_schedule: str = "random"
    grad_clip: Any = None  # None, number, or schedule: g is clamped to [−c, c]

    def __post_init__(self) -> None:
        check_choice(self.weighting, WEIGHTINGS, "weighting")
        check_choice(self.time_schedule, TIME_SCHEDULES, "time_schedule")
        for key in ("min_step_percent", "max_step_percent", "grad_clip"):
            check_schedule(getattr(self, key), key)
        check_finite(self, "guidance_scale")
        check_schedule_between(self, 0.0, 1.0, "min_step_percent", "max_step_percent")
        check_schedules_ordered(self, "min_step_percent", "max_step_percent")
        check_schedule_between(self, 1e-12, float("inf"), "grad_clip")


class ScoreDistillation(nn.Module):
    """Turns the prior's noise predictions into a gradient on the rendered images' latents."""

    Config = GuidanceConfig

    def __init__(self, cfg: GuidanceConfig, prior: DiffusionPrior) -> None:
        super().__init__()
        self.cfg = cfg
        # a plain attribute, not a submodule: the frozen prior's weights stay out of checkpoints
        object.__setattr__(self, "prior", prior)
        self.skipped_steps = 0
        self.update_step(0, 1)

    @property
    def name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__.lower())

    # --- schedules ---------------------------------------------------------------------------
    def update_step(self, step: int, max_steps: int) -> None:
        """Re-evaluate the scheduled values (timestep range, clipping) for ``step``."""
        T = self.prior.num_train_timesteps
        self.step, self.max_steps = step, max_steps
        self.min_step = int(round(schedule_value(self.cfg.min_step_percent, step) * T))
        self.max_step = int(round(schedule_value(self.cfg.max_step_percent, step) * T))
        self.min_step = max(0, min(self.min_step, T - 1))
        self.max_step = max(self.min_step, min(self.max_step, T - 1))
        self.grad_clip = schedule_value(self.cfg.grad_clip, step)

    def sample_timesteps(self, batch_size: int, device: torch.device) -> Tensor:
        """[B] integer timesteps in [min_step, max_step] (inclusive)."""
        if self.cfg.time_schedule == "linear":
            fraction = min(1.0, self.step / max(1, self.max_steps))
            t = round(self.max_step - fraction * (self.max_step - self.min_step))
            return torch.full((batch_size,), t, dtype=torch.long, device=device)
        return torch.randint(self.min_step, self.max_step + 1, (batch_size,), dtype=torch.long, device=device)

    # --- shared pieces -------------------------------------------------------------------------
    def alpha_bar(self, t: Tensor, like: Tensor) -> Tensor:
        """ᾱ_t broadcast to the shape of ``like`` [B,C,h,w]."""
        return self.prior.alphas_cumprod.to(like.device)[t].view(-1, *([1] * (like.dim() - 1))).to(like.dtype)

    def weight(self, t: Tensor, like: Tensor) -> Tensor:
        """w(t) [B,1,1,1]."""
        alpha_bar = self.alpha_bar(t, like)
        if self.cfg.weighting == "sds":
            return 1.0 - alpha_bar
        if self.cfg.weighting == "fantasia3d":
            return alpha_bar.sqrt() * (1.0 - alpha_bar)
        if self.cfg.weighting == "ism":
            return ((1.0 - alpha_bar) / alpha_bar).sqrt()
        return torch.ones_like(alpha_bar)

    def add_noise(self, x: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = √ᾱ_t x + √(1 − ᾱ_t) ε."""
        alpha_bar = self.alpha_bar(t, x)
        return alpha_bar.sqrt() * x + (1.0 - alpha_bar).sqrt() * noise

    def cond_and_null_eps(self, x_t: Tensor, t: Tensor, prompt: Prompt, cameras: Cameras) -> tuple[Tensor, Tensor]:
        """(ε(x_t; y, t), ε(x_t; ∅, t)) from one batched forward of size 2B (4B under Perp-Neg)."""
        if prompt.cfg.use_perp_neg:
            return perp_neg.cond_and_null_eps(self.prior, x_t, t, prompt, cameras)
        cond = torch.cat([prompt.cond(cameras), prompt.null(cameras)])
        eps = self.prior.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), cond)
        eps_cond, eps_null = eps.chunk(2)
        return eps_cond, eps_null

    def cfg_eps(self, x_t: Tensor, t: Tensor, prompt: Prompt, cameras: Cameras, scale: float) -> Tensor:
        """Classifier-free guided ε_s = ε_∅ + s (ε_y − ε_∅)."""
        eps_cond, eps_null = self.cond_and_null_eps(x_t, t, prompt, cameras)
        return eps_null + scale * (eps_cond - eps_null)

    # --- what a method defines -----------------------------------------------------------------
    def direction(self, x: Tensor, t: Tensor, cameras: Cameras, prompt: Prompt) -> Tensor:
        """The un-weighted gradient [B,C,h,w] on the (detached) latents x at timesteps t."""
        raise NotImplementedError

    def loss_terms(self) -> tuple[str, ...]:
        """The <term>s of the loss_<term> entries this method returns (what lambda_<term> may weigh)."""
        return (self.name,)

    def extra_losses(self, x: Tensor, cameras: Cameras, prompt: Prompt) -> dict[str, Tensor]:
        """Losses of a method's own network (VSD/ESD), computed on detached latents."""
        return {}

    # --- the call ------------------------------------------------------------------------------
    def forward(self, rgb: Tensor, cameras: Cameras, prompt: Prompt) -> dict[str, Tensor]:
        """rgb [B,H,W,3] in [0,1] → {loss_<name>, grad_norm, t, skipped, …}."""
        x = self.prior.encode_images(rgb.permute(0, 3, 1, 2))
        t = self.sample_timesteps(x.shape[0], x.device)
        with torch.no_grad():
            grad = self.weight(t, x) * self.direction(x.detach(), t, cameras, prompt)
        out = self.as_loss(x, grad)
        out["t"] = t.float().mean()
        out.update(self.extra_losses(x.detach(), cameras, prompt))
        return out

    def as_loss(self, x: Tensor, grad: Tensor) -> dict[str, Tensor]:
        """The target trick: a loss whose gradient on x is ``grad`` (after the NaN guard and clipping)."""
        if not torch.isfinite(grad).all():
            # a non-finite gradient would poison the optimizer state: skip the step and count it
            self.skipped_steps += 1
            zero = (x * 0.0).sum()
            return {f"loss_{self.name}": zero, "grad_norm": torch.tensor(float("nan")), "skipped": torch.tensor(float(self.skipped_steps))}
        if self.grad_clip is not None:
            grad = grad.clamp(-self.grad_clip, self.grad_clip)
        target = (x - grad).detach()
        loss = 0.5 * F.mse_loss(x, target, reduction="sum") / x.shape[0]
        return {f"loss_{self.name}": loss, "grad_norm": grad.norm().detach(), "skipped": torch.tensor(float(self.skipped_steps))}
